"""The local backend's on-demand reclaim hook, driven with real supervisor processes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from airflow_spot_training.backends.local import LocalBackend, preempt_running, request_preemption
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.backends.base import LaunchRequest
from airflow_spot_training.runtime.checkpoint import CheckpointManager

TINY = [sys.executable, "-m", "airflow_spot_training.examples.tiny"]


def _request(tmp_path: Path, attempt: int, capacity: Capacity, key: str = "k1") -> LaunchRequest:
    contract = Contract(checkpoint_uri=str(tmp_path / "ckpt" / key), attempt=attempt, capacity=capacity.value,
                        preemptions=0, run_key=key)
    return LaunchRequest(contract=contract, capacity=capacity, token=f"{key}-a{attempt}")


def _wait_final(backend: LocalBackend, handle: dict, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = backend.describe(handle)
        if status.is_final:
            return status
        time.sleep(0.1)
    raise AssertionError(f"attempt did not end: {backend.describe(handle)}")


def _wait_started(handle: dict, steps: int = 1, timeout: float = 30.0) -> None:
    """Until the training has recorded its start (and so installed its SIGTERM handler)."""
    log = Path(handle.attempt_dir) / "training.log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and '"event": "start"' in log.read_text():
            time.sleep(0.2)
            return
        time.sleep(0.05)
    raise AssertionError("training did not start")


def _evidence(prefix: Path) -> list[dict]:
    path = prefix / "_evidence" / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestPreemptNow:
    def test_spot_attempt_is_reclaimed_and_resumes_from_its_notice_checkpoint(self, tmp_path):
        backend = LocalBackend(TINY + ["--steps", "400", "--step-seconds", "0.02", "--checkpoint-every", "1000"],
                               notice_seconds=5, state_dir=str(tmp_path / "state"))
        h1 = backend.launch(_request(tmp_path, 1, Capacity.SPOT))
        _wait_started(h1)
        assert preempt_running(tmp_path / "state") == [Path(h1.attempt_dir)]
        s1 = _wait_final(backend, h1)
        assert s1.state == "preempted" and s1.preemptions == 1
        step = CheckpointManager(str(tmp_path / "ckpt" / "k1")).latest().step
        assert 0 < step < 400  # the notice checkpoint, taken mid-run

        h2 = backend.launch(_request(tmp_path, 2, Capacity.ON_DEMAND))
        _wait_started(h2)
        assert request_preemption(h2.attempt_dir) is False  # on-demand is never reclaimed
        assert _wait_final(backend, h2).state == "succeeded"
        starts = _evidence(tmp_path / "ckpt" / "k1")
        assert [(s["attempt"], s["start_step"]) for s in starts] == [(1, 0), (2, step)]
        metrics = json.loads((tmp_path / "ckpt" / "k1" / "_results" / "attempt-2.metrics.json").read_text())
        assert metrics == {"steps": 400, "total": 400 * 399 // 2}

    def test_finished_attempt_is_not_reclaimed(self, tmp_path):
        backend = LocalBackend(TINY + ["--steps", "2", "--step-seconds", "0"], state_dir=str(tmp_path / "state"))
        handle = backend.launch(_request(tmp_path, 1, Capacity.SPOT))
        assert _wait_final(backend, handle).state == "succeeded"
        assert request_preemption(handle.attempt_dir) is False
        assert preempt_running(tmp_path / "state") == []


class TestTinyWorkload:
    def test_interrupted_checkpoint_write_leaves_the_previous_commit_in_charge(self, tmp_path):
        backend = LocalBackend(
            TINY + ["--steps", "60", "--step-seconds", "0.05", "--checkpoint-every", "5",
                    "--stall-interruption-save"],
            notice_seconds=1, state_dir=str(tmp_path / "state"))
        h1 = backend.launch(_request(tmp_path, 1, Capacity.SPOT))
        prefix = tmp_path / "ckpt" / "k1"
        deadline = time.time() + 30
        while CheckpointManager(str(prefix)).latest() is None or CheckpointManager(str(prefix)).latest().step < 10:
            assert time.time() < deadline
            time.sleep(0.05)
        assert request_preemption(h1.attempt_dir)
        assert _wait_final(backend, h1).state == "preempted"
        committed = CheckpointManager(str(prefix)).latest().step
        stalled = [json.loads(line)["step"] for line in (Path(h1.attempt_dir) / "training.log").read_text()
                   .splitlines() if "stalling-save" in line]
        assert len(stalled) == 1 and stalled[0] > committed  # the cut-short write was newer

        h2 = backend.launch(_request(tmp_path, 2, Capacity.SPOT))
        assert _wait_final(backend, h2).state == "succeeded"
        second = _evidence(prefix)[1]
        assert second["start_step"] == committed
        assert stalled[0] in second["uncommitted_steps"]
        metrics = json.loads((prefix / "_results" / "attempt-2.metrics.json").read_text())
        assert metrics == {"steps": 60, "total": 60 * 59 // 2}


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    yield
    for launch in tmp_path.glob("state/*/attempt-*/launch.json"):
        LocalBackend(["true"]).stop(json.loads(launch.read_text()))
