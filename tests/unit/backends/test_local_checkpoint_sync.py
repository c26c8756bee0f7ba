"""LocalBackend with the synced checkpoint folder, and reclaims without notice."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_spot_training.backends.base import BackendConfigError, SpotBackend
from airflow_spot_training.backends.local import LocalBackend, request_preemption, step_preemptions
from airflow_spot_training.core.folder_sync import FolderSync
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests.unit.backends.test_local import _alive, _request, _wait_final, _wait_for_file

# Records its pid, writes one checkpoint file into the synced folder, records any SIGTERM, then waits.
WRITER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    marks = os.environ["MARK_DIR"]
    signal.signal(signal.SIGTERM, lambda *a: (open(marks + "/term", "w").close(), sys.exit(143)))
    open(marks + "/pid", "w").write(str(os.getpid()))
    folder = os.environ["SPOT_TRAINING_CHECKPOINT_DIR"]
    with open(os.path.join(folder, "state-00000007.json"), "w") as f:
        json.dump({"step": 7}, f)
    time.sleep(float(os.environ.get("RUN_SECONDS", "0")))
    """
)


def _backend(tmp_path: Path, **kw) -> LocalBackend:
    return LocalBackend(command=[sys.executable, "-c", WRITER], env={"MARK_DIR": str(tmp_path), **kw.pop("env", {})},
                        state_dir=str(tmp_path / "state"), checkpoint_sync={"settle_seconds": 0, "poll_seconds": 0.05},
                        **kw)


def test_the_training_writes_a_folder_and_the_prefix_gets_a_committed_checkpoint(tmp_path):
    backend = _backend(tmp_path)
    handle = backend.launch(_request(tmp_path))
    assert _wait_final(backend, handle).state == "succeeded"
    attempt_dir = Path(handle.attempt_dir)
    assert (attempt_dir / "checkpoint" / "state-00000007.json").exists()  # the per-attempt folder
    latest = CheckpointManager(str(tmp_path / "ck")).latest()
    assert latest.step == 7 and latest.record.files == ["state-00000007.json"]
    spec = json.loads((attempt_dir / "spec.json").read_text())
    assert spec["command"][1:3] == ["-m", "airflow_spot_training.runtime.folder_sync"]


def test_a_reclaim_without_notice_sends_no_sigterm(tmp_path):
    backend = _backend(tmp_path, env={"RUN_SECONDS": "60"}, preemptions=step_preemptions([7], notice_seconds=[0]),
                       notice_seconds=30)
    handle = backend.launch(_request(tmp_path))
    status = _wait_final(backend, handle, timeout=60)  # reclaimed once step 7 is committed
    assert status.state == "preempted" and status.details["exit_code"] == -9
    assert not (tmp_path / "term").exists()  # no notice at all
    _wait_for_file(tmp_path / "pid")
    assert not _alive(int((tmp_path / "pid").read_text()))  # the training went with its machine


def test_per_attempt_notice_overrides_the_backend_default(tmp_path):
    backend = _backend(tmp_path, env={"RUN_SECONDS": "60"}, preemptions=step_preemptions([None], notice_seconds=[0.5]),
                       notice_seconds=30)
    handle = backend.launch(_request(tmp_path))
    _wait_for_file(tmp_path / "pid")
    assert json.loads((Path(handle.attempt_dir) / "spec.json").read_text())["notice_seconds"] == 0.5
    assert request_preemption(handle.attempt_dir)
    assert _wait_final(backend, handle, timeout=60).state == "preempted"
    assert (tmp_path / "term").exists()  # this time the training got the notice


def test_serialize_round_trip_keeps_the_sync_settings(tmp_path):
    backend = _backend(tmp_path)
    rebuilt = SpotBackend.deserialize(*backend.serialize())
    assert rebuilt.checkpoint_sync == FolderSync(settle_seconds=0, poll_seconds=0.05)
    assert LocalBackend(command=["x"]).serialize()[1]["checkpoint_sync"] is None


@pytest.mark.parametrize("value, named", [
    ({"keep_last": 0}, "keep_last=0"),
    ("on", "checkpoint_sync='on' is invalid"),
])
def test_invalid_checkpoint_sync_fails_at_parse_time(value, named):
    with pytest.raises(BackendConfigError, match=named):
        LocalBackend(command=["x"], checkpoint_sync=value)


def test_invalid_per_attempt_notice_is_named():
    with pytest.raises(BackendConfigError, match="notice_seconds.0: Input should be greater than or equal to 0"):
        LocalBackend(command=["x"], preemptions=step_preemptions([1], notice_seconds=[-1]))
