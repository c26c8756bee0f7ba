"""CheckpointManager: atomic saves, retention, cadence, and faults at every stage of a save."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_spot_training.core.checkpoint_protocol import COMMIT_FILE, step_dir_name
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager

WRITER = Path(__file__).with_name("fault_writer.py")


def _payload(step: int) -> dict[str, bytes]:
    return {f"part{i}.bin": bytes([step % 256]) * (1000 + i) for i in range(3)}


def _run_writer(root: Path, step: int, die_at: int, keep_last: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WRITER), str(root), str(step), str(die_at), str(keep_last)],
        capture_output=True, text=True, timeout=120,
    )


class TestCheckpointManager:
    def test_save_then_latest_round_trip(self, tmp_path):
        m = CheckpointManager(str(tmp_path), keep_last=None)
        assert m.latest() is None
        m.save(10, {"a.bin": b"one"}, total_steps=100, reason="periodic")
        m.save(20, {"a.bin": b"two"}, total_steps=100)
        latest = m.latest()
        assert latest is not None and latest.step == 20
        assert latest.record.total_steps == 100
        with m.open_file(latest, "a.bin") as f:
            assert f.read() == b"two"
        assert [c.step for c in m.committed()] == [10, 20]

    def test_uncommitted_step_is_ignored(self, tmp_path):
        m = CheckpointManager(str(tmp_path), keep_last=None)
        m.save(10, {"a.bin": b"one"})
        partial = tmp_path / step_dir_name(20)
        partial.mkdir()
        (partial / "a.bin").write_bytes(b"half")
        assert m.latest().step == 10

    def test_commit_naming_missing_payload_is_ignored(self, tmp_path):
        m = CheckpointManager(str(tmp_path), keep_last=None)
        m.save(10, {"a.bin": b"one"})
        m.save(20, {"a.bin": b"two"})
        os.remove(tmp_path / step_dir_name(20) / "a.bin")
        assert m.latest().step == 10

    def test_garbled_commit_record_is_ignored(self, tmp_path):
        m = CheckpointManager(str(tmp_path), keep_last=None)
        m.save(10, {"a.bin": b"one"})
        m.save(20, {"a.bin": b"two"})
        (tmp_path / step_dir_name(20) / COMMIT_FILE).write_text('{"step": 20, "commi')
        assert m.latest().step == 10

    def test_keep_last_removes_oldest(self, tmp_path):
        m = CheckpointManager(str(tmp_path), keep_last=2)
        for step in (1, 2, 3, 4):
            m.save(step, {"a.bin": bytes([step])})
        assert [c.step for c in m.committed()] == [3, 4]
        assert not (tmp_path / step_dir_name(1)).exists()

    def test_committed_step_is_never_rewritten(self, tmp_path):
        m = CheckpointManager(str(tmp_path), keep_last=None)
        m.save(5, {"a.bin": b"first"})
        m.save(5, {"a.bin": b"second"})
        with m.open_file(m.latest(), "a.bin") as f:
            assert f.read() == b"first"

    def test_cadence_by_steps(self, tmp_path):
        m = CheckpointManager(str(tmp_path), every_steps=10)
        assert [s for s in range(1, 31) if m.should_save(s)] == [10, 20, 30]

    def test_cadence_by_wall_clock(self, tmp_path):
        m = CheckpointManager(str(tmp_path), every_seconds=0.0)
        assert m.should_save(1)
        m2 = CheckpointManager(str(tmp_path), every_seconds=3600)
        assert not m2.should_save(1)

    @pytest.mark.parametrize("name", ["COMMIT.json", "a/b", ".hidden"])
    def test_rejects_reserved_file_names(self, tmp_path, name):
        with pytest.raises(ValueError, match="invalid checkpoint file name"):
            CheckpointManager(str(tmp_path)).save(1, {name: b"x"})

    def test_unwritable_prefix_is_named(self, tmp_path):
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        with pytest.raises(CheckpointError, match="is not writable"):
            CheckpointManager(str(locked / "ck")).check_writable()

    def test_prefix_under_a_file_is_not_writable(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(CheckpointError, match=r"checkpoint_prefix .* is not writable"):
            CheckpointManager(str(blocker / "ck")).check_writable()


class TestFaultInjection:
    """Kill the writer at every filesystem operation of a save, with and without retention."""

    @pytest.mark.parametrize("keep_last", [1, 3])
    def test_kill_at_every_stage(self, tmp_path, keep_last):
        probe = tmp_path / "probe"
        CheckpointManager(str(probe), keep_last=keep_last).save(1, _payload(1))
        dry = _run_writer(probe, 2, 0, keep_last)
        assert dry.returncode == 0, dry.stderr
        total_ops = int(dry.stdout.strip().splitlines()[-1])
        assert total_ops >= 8  # makedirs/open/write/close per file, commit, fsync, replace, retention

        for die_at in range(1, total_ops + 1):
            root = tmp_path / f"run{die_at}"
            m = CheckpointManager(str(root), keep_last=keep_last)
            m.save(1, _payload(1))
            result = _run_writer(root, 2, die_at, keep_last)
            assert result.returncode == 137, (die_at, result.stderr)
            latest = CheckpointManager(str(root), keep_last=keep_last).latest()
            assert latest is not None, f"no committed checkpoint after a kill at op {die_at}"
            assert latest.step in (1, 2)
            expected = _payload(latest.step)
            for name, data in expected.items():  # whatever latest() returns is whole
                with m.open_file(latest, name) as f:
                    assert f.read() == data, (die_at, name)
            if latest.step == 1:  # the new one did not commit: the previous one is intact
                assert [c.step for c in m.committed()][-1] == 1
            # a later save after the crash still works and wins
            m.save(3, _payload(3))
            assert m.latest().step == 3


def test_a_reader_sees_what_another_writer_did_to_a_step_it_listed_before(aws):
    """fsspec keeps one S3 filesystem (and its listings) per process: a reader that listed a step
    directory earlier still sees the step as it is now after another writer replaced it."""
    import fsspec

    uri = f"s3://{aws['bucket']}/stale-listing"
    reader = CheckpointManager(uri, keep_last=None, storage_options=aws["storage_options"])
    CheckpointManager(uri, keep_last=None, storage_options=aws["storage_options"]).save(6, _payload(6))
    fs, root = fsspec.core.url_to_fs(uri, **aws["storage_options"])
    fs.ls(f"{root}/{step_dir_name(6)}")  # this process lists the step: fsspec caches it, ETags included
    assert reader.latest().step == 6

    # another process (its own filesystem object) starts over at the same prefix
    other = fsspec.filesystem("s3", skip_instance_cache=True, **aws["storage_options"])
    other.rm(f"{root}/{step_dir_name(6)}", recursive=True)
    other.pipe_file(f"{root}/{step_dir_name(6)}/part9.bin", b"new")
    other.pipe_file(f"{root}/{step_dir_name(6)}/{COMMIT_FILE}",
                        b'{"step": 6, "committed_at": 2.0, "files": ["part9.bin"], "reason": "final"}')

    latest = reader.latest()
    assert latest is not None and latest.record.reason == "final" and latest.record.files == ["part9.bin"]
