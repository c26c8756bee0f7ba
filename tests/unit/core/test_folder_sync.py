"""FolderSync: the synced folder's settings and the command lines backends run."""

from __future__ import annotations

import shlex

import pytest

from airflow_spot_training.core.folder_sync import WRAPPER_MODULE, FolderSync, FolderSyncConfigError


class TestFolderSync:
    @pytest.mark.parametrize("value, expected", [(None, None), (False, None), (True, FolderSync())])
    def test_from_value_switches(self, value, expected):
        assert FolderSync.from_value(value) == expected

    def test_from_dict_round_trips(self):
        sync = FolderSync.from_value({"settle_seconds": 2, "keep_last": None, "max_bytes_per_second": 1e6})
        assert FolderSync.from_value(sync.to_dict()) == sync

    @pytest.mark.parametrize("settings, named", [
        ({"settle_secs": 1}, "unknown setting(s) settle_secs"),
        ({"local_dir": "relative/dir"}, "local_dir='relative/dir' must be an absolute path"),
        ({"finished_by": "magic"}, "finished_by='magic' is invalid"),
        ({"keep_last": 0}, "keep_last=0 must be 1 or more"),
        ({"max_concurrency": 0}, "max_concurrency=0 must be a positive integer"),
        ({"poll_seconds": 0}, "poll_seconds=0 must be a number of more than 0"),
        ({"max_bytes_per_second": -1}, "max_bytes_per_second=-1"),
    ])
    def test_invalid_settings_name_the_setting(self, settings, named):
        with pytest.raises(FolderSyncConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
            FolderSync.from_value(settings)

    def test_rejects_other_types(self):
        with pytest.raises(FolderSyncConfigError, match="pass True, a dict of settings"):
            FolderSync.from_value("yes")

    def test_wrap_puts_the_command_after_the_separator(self):
        sync = FolderSync(settle_seconds=3, keep_last=None, max_bytes_per_second=5e6)
        argv = sync.wrap(["python", "train.py", "--dir", "x"], python="/venv/bin/python", aws_imds=True)
        assert argv[:3] == ["/venv/bin/python", "-m", WRAPPER_MODULE]
        separator = argv.index("--")
        assert argv[separator + 1:] == ["python", "train.py", "--dir", "x"]
        options = argv[3:separator]
        assert options[options.index("--dir") + 1] == "/mnt/checkpoint"
        assert options[options.index("--keep-last") + 1] == "all"
        assert "--aws-imds" in options and "--gce-metadata" not in options
        from airflow_spot_training.runtime.folder_sync import parse_args

        parsed = parse_args(argv[3:])
        assert parsed.command == ["python", "train.py", "--dir", "x"]
        assert parsed.settle_seconds == 3 and parsed.max_bytes_per_second == 5e6 and parsed.aws_imds

    def test_local_dir_wins_over_the_backend_default(self):
        argv = FolderSync(local_dir="/data/ck").wrap(["t"], python="p", default_dir="/mnt/checkpoint")
        assert argv[argv.index("--dir") + 1] == "/data/ck"

    def test_wrap_shell_runs_the_line_with_bash(self):
        line = FolderSync().wrap_shell("cd /app && python train.py 'a b'", gce_metadata=True)
        argv = shlex.split(line)
        assert argv[0] == "python3" and "--gce-metadata" in argv
        assert argv[argv.index("--") + 1:] == ["bash", "-c", "cd /app && python train.py 'a b'"]


class TestBackendCommands:
    """What the VM and container backends will pass, as the wrapper parses it."""

    def _parsed(self, argv: list[str]):
        from airflow_spot_training.runtime.folder_sync import parse_args

        assert argv[1:3] == ["-m", WRAPPER_MODULE]
        return parse_args(argv[3:])

    def test_ec2_watches_the_imds_notice_in_mnt_checkpoint(self):
        from airflow_spot_training.core.folder_sync import ec2_user_data_command

        parsed = self._parsed(shlex.split(ec2_user_data_command(FolderSync(), "python train.py --lr 0.1")))
        assert parsed.dir == "/mnt/checkpoint" and parsed.aws_imds and not parsed.gce_metadata
        assert parsed.command == ["bash", "-c", "python train.py --lr 0.1"]

    def test_compute_engine_watches_the_preempted_flag(self):
        from airflow_spot_training.core.folder_sync import compute_engine_command

        parsed = self._parsed(shlex.split(compute_engine_command(FolderSync(local_dir="/data"), "./run.sh")))
        assert parsed.dir == "/data" and parsed.gce_metadata

    def test_vertex_ai_wraps_the_container_command_and_keeps_args_after_it(self):
        from airflow_spot_training.core.folder_sync import vertex_ai_container_command

        command = vertex_ai_container_command(FolderSync(), ["python", "-m", "trainer"])
        parsed = self._parsed(command + ["--epochs", "3"])  # the container appends args
        assert parsed.command == ["python", "-m", "trainer", "--epochs", "3"] and parsed.gce_metadata
        with pytest.raises(FolderSyncConfigError, match="needs an explicit container command"):
            vertex_ai_container_command(FolderSync(), [])
