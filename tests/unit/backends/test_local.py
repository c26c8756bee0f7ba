"""LocalBackend: detached attempts, simulated reclaims, idempotent launch, stop."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from airflow_spot_training.backends.base import (
    BackendConfigError,
    LaunchRequest,
    SpotBackend,
    CapacityUnavailable,
    resolve_backend,
)
from airflow_spot_training.backends.local import (
    LocalBackend,
    _alive,
    fixed_preemptions,
    random_preemptions,
    request_preemption,
    step_preemptions,
    trace_preemptions,
)
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity

# A training stand-in: records its pid, runs N seconds unless told to stop, exits with CODE.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    stop = []
    if os.environ.get("IGNORE_TERM") != "1":
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.environ["MARK_DIR"] + "/pid-" + os.environ["SPOT_TRAINING_ATTEMPT"], "a").write(f"{os.getpid()}\\n")
    end = time.time() + float(os.environ.get("RUN_SECONDS", "0.2"))
    while time.time() < end and not stop:
        time.sleep(0.02)
    sys.exit(143 if stop else int(os.environ.get("CODE", "0")))
    """
)


def _request(tmp_path: Path, attempt: int = 1, capacity: Capacity = Capacity.SPOT, key: str = "run1") -> LaunchRequest:
    contract = Contract(str(tmp_path / "ck"), attempt, capacity.value, 0, key)
    return LaunchRequest(contract=contract, capacity=capacity, token=f"{key}-a{attempt}")


def _backend(tmp_path: Path, **kw) -> LocalBackend:
    env = {"MARK_DIR": str(tmp_path), **kw.pop("env", {})}
    return LocalBackend(command=[sys.executable, "-c", SCRIPT], env=env, state_dir=str(tmp_path / "state"),
                        notice_seconds=kw.pop("notice_seconds", 1.0), **kw)


def _wait_for_file(path: Path, timeout: float = 60) -> None:
    end = time.time() + timeout
    while not path.exists() and time.time() < end:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def _wait_final(backend: LocalBackend, handle, timeout: float = 30):
    end = time.time() + timeout
    while time.time() < end:
        status = backend.describe(handle)
        if status.is_final:
            return status
        time.sleep(0.05)
    raise AssertionError(f"attempt did not end: {backend.describe(handle)}")


class TestLocalBackend:
    def test_success(self, tmp_path):
        b = _backend(tmp_path)
        status = _wait_final(b, b.launch(_request(tmp_path)))
        assert status.state == "succeeded" and status.details["exit_code"] == 0
        assert status.started_at and status.ended_at >= status.started_at

    def test_genuine_failure_reports_exit_code(self, tmp_path):
        b = _backend(tmp_path, env={"CODE": "3"})
        status = _wait_final(b, b.launch(_request(tmp_path)))
        assert status.state == "failed" and "exit" in status.reason and "code 3" in status.reason

    def test_spot_attempt_is_preempted_with_a_notice_then_killed(self, tmp_path):
        # the training ignores the notice: the hard kill after notice_seconds ends it
        b = _backend(tmp_path, env={"RUN_SECONDS": "30", "IGNORE_TERM": "1"}, notice_seconds=0.5)
        handle = b.launch(_request(tmp_path))
        _wait_for_file(tmp_path / "pid-1")  # up, with its SIGTERM disposition set
        assert request_preemption(handle.attempt_dir)
        status = _wait_final(b, handle)
        assert status.state == "preempted" and status.preemptions == 1
        assert status.details["exit_code"] == -9
        assert "notice_at" in status.details

    def test_on_demand_attempt_is_never_preempted(self, tmp_path):
        b = _backend(tmp_path, preemptions=fixed_preemptions([0.0]))
        status = _wait_final(b, b.launch(_request(tmp_path, capacity=Capacity.ON_DEMAND)))
        assert status.state == "succeeded"

    def test_launch_is_idempotent_on_the_token(self, tmp_path):
        b = _backend(tmp_path, env={"RUN_SECONDS": "1"})
        first = b.launch(_request(tmp_path))
        again = b.launch(_request(tmp_path))
        assert again == first
        assert b.find(_request(tmp_path)) == first
        _wait_final(b, first)
        assert len((tmp_path / "pid-1").read_text().split()) == 1  # exactly one training process ran

    def test_attempt_outlives_the_launching_process(self, tmp_path):
        code = (
            "import sys, json; sys.path.insert(0, %r)\n"
            "from tests.unit.backends.test_local import _backend, _request\n"
            "from pathlib import Path\n"
            "h = _backend(Path(%r), env={'RUN_SECONDS': '1.5'}).launch(_request(Path(%r)))\n"
            "print(json.dumps(h.to_dict()))\n"
        ) % (str(Path(__file__).parents[3]), str(tmp_path), str(tmp_path))
        import subprocess

        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        handle = json.loads(out.stdout.strip().splitlines()[-1])
        b = _backend(tmp_path)
        assert b.describe(handle).state == "running"  # the launcher is gone, the attempt is not
        assert _wait_final(b, handle).state == "succeeded"

    def test_stop_ends_the_training_and_its_supervisor(self, tmp_path):
        b = _backend(tmp_path, env={"RUN_SECONDS": "60", "IGNORE_TERM": "1"}, notice_seconds=0.3)
        handle = b.launch(_request(tmp_path))
        _wait_for_file(tmp_path / "pid-1")
        pid = int((tmp_path / "pid-1").read_text().split()[0])
        b.stop(handle)
        assert b.describe(handle).state == "stopped"
        assert not _alive(pid) and not _alive(handle.supervisor_pid)

    def test_vanished_supervisor_is_a_failure(self, tmp_path):
        b = _backend(tmp_path, env={"RUN_SECONDS": "60"})
        handle = b.launch(_request(tmp_path))
        time.sleep(0.3)
        os.killpg(handle.supervisor_pid, 9)
        status = _wait_final(b, handle)
        assert status.state == "failed" and "vanished" in status.reason

    def test_trace_with_no_capacity_refuses_spot(self, tmp_path):
        trace = tmp_path / "t.json"
        trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0, 0, 1, 1]}))
        b = _backend(tmp_path, preemptions=trace_preemptions(str(trace), seconds_per_sample=100))
        with pytest.raises(CapacityUnavailable, match="no spot capacity at sample 0"):
            b.launch(_request(tmp_path))
        # on-demand does not care about spot capacity
        assert _wait_final(b, b.launch(_request(tmp_path, attempt=2, capacity=Capacity.ON_DEMAND))).state == "succeeded"

    def test_trace_preempts_when_capacity_goes(self, tmp_path):
        trace = tmp_path / "t.json"
        trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [1, 1, 0, 1]}))
        b = _backend(tmp_path, env={"RUN_SECONDS": "30"},
                     preemptions=trace_preemptions(str(trace), seconds_per_sample=0.2))
        handle = b.launch(_request(tmp_path))
        assert handle.preempt_at == pytest.approx(handle.launched_at + 0.4, abs=0.05)
        assert _wait_final(b, handle).state == "preempted"

    def test_random_rate_is_reproducible(self, tmp_path):
        b = _backend(tmp_path, preemptions=random_preemptions(per_hour=3600, seed=7), env={"RUN_SECONDS": "0"})
        at1 = b._preempt_at(_request(tmp_path), tmp_path, 0.0)
        at2 = b._preempt_at(_request(tmp_path), tmp_path, 0.0)
        assert at1 == at2 and at1 > 0

    def test_serialize_round_trip(self, tmp_path):
        b = _backend(tmp_path, preemptions=fixed_preemptions([1, None]))
        classpath, kwargs = b.serialize()
        assert json.loads(json.dumps(kwargs)) == kwargs
        again = SpotBackend.deserialize(classpath, kwargs)
        assert again.serialize() == (classpath, kwargs)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"command": None}, "LocalBackend needs command"),
            ({"command": "python train.py"}, r"command='python train.py' is invalid.*as a list of strings"),
            ({"command": ["x"], "notice_seconds": -1}, r"notice_seconds=-1 is invalid \(Input should be greater"),
            ({"command": ["x"], "preemptions": {"kind": "sometimes"}}, "is not a schedule"),
            ({"command": ["x"], "preemptions": {"kind": "trace", "path": "/nonexistent.json"}}, "does not exist"),
            ({"command": ["x"], "env": {"2FA": "x"}}, "are not environment variable names"),
            ({"command": ["x"], "notice_secs": 1}, "has no argument notice_secs=. Did you mean notice_seconds="),
        ],
    )
    def test_bad_configuration(self, kwargs, message):
        with pytest.raises(BackendConfigError, match=message):
            LocalBackend(**kwargs)

    def test_resolve_backend_names_the_choices(self):
        with pytest.raises(BackendConfigError, match=r"backend='nimbus' is not a backend.*local"):
            resolve_backend("nimbus")


class TestStepPreemptions:
    def test_reclaimed_once_the_step_is_committed(self, tmp_path):
        train = textwrap.dedent(
            """
            import signal, sys, time
            from airflow_spot_training.runtime import CheckpointManager, read_contract
            m = CheckpointManager(read_contract().checkpoint_uri)
            stop = []
            signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
            for step in range(1, 10000):
                time.sleep(0.01)
                m.save(step, {"w": b"x"})
                if stop:
                    sys.exit(143)
            """
        )
        b = LocalBackend(command=[sys.executable, "-c", train], state_dir=str(tmp_path / "state"),
                         preemptions=step_preemptions([30]), notice_seconds=2)
        status = _wait_final(b, b.launch(_request(tmp_path)), timeout=60)
        assert status.state == "preempted"
        from airflow_spot_training.runtime.checkpoint import CheckpointManager

        assert 30 <= CheckpointManager(str(tmp_path / "ck")).latest().step < 10000

    def test_bad_steps(self):
        with pytest.raises(BackendConfigError, match="step_preemptions takes non-negative integers"):
            LocalBackend(command=["x"], preemptions=step_preemptions([1.5]))

    def test_a_missing_trace_is_named_when_the_schedule_is_built(self):
        with pytest.raises(BackendConfigError, match="trace file '/nonexistent.json' does not exist"):
            trace_preemptions("/nonexistent.json")
