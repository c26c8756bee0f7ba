"""The operator's loop with real local attempts: re-attach after a worker crash, waiting for
capacity, in-place interruptions, attempt caps, already-past deadlines, blocking mode."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from airflow_spot_training.backends.base import AttemptStatus, LaunchRequest, CapacityUnavailable
from airflow_spot_training.backends.local import LocalBackend, fixed_preemptions
from airflow_spot_training.core.policy import Action, Decision, ThresholdPolicy
from airflow_spot_training.operators.spot_training import LEDGER_KEY, SpotTrainingOperator
from tests.unit.operators.harness import TaskRun

# Commits a checkpoint per step through the real runtime; honours SIGTERM; logs its start.
TRAIN = textwrap.dedent(
    """
    import os, signal, sys, time
    from airflow_spot_training.runtime import CheckpointManager, read_contract
    c = read_contract()
    open(os.environ["MARKS"] + f"/start-{c.attempt}", "a").write(f"{os.getpid()}\\n")
    m = CheckpointManager(c.checkpoint_uri)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    steps = int(os.environ.get("STEPS", "6"))
    start = m.latest().step if m.latest() else 0
    for step in range(start + 1, steps + 1):
        time.sleep(float(os.environ.get("DELAY", "0.05")))
        m.save(step, {"w.bin": bytes([step % 256])}, total_steps=steps)
        if stop:
            sys.exit(143)
    """
)


def backend(tmp_path: Path, cls=LocalBackend, **kw) -> LocalBackend:
    env = {"MARKS": str(tmp_path), **kw.pop("env", {})}
    return cls(command=[sys.executable, "-c", TRAIN], env=env, state_dir=str(tmp_path / "state"),
               notice_seconds=kw.pop("notice_seconds", 0.5), **kw)


def operator(tmp_path: Path, b: LocalBackend, **kw) -> SpotTrainingOperator:
    kw.setdefault("poll_interval", 0.05)
    return SpotTrainingOperator(task_id="train", backend=b, checkpoint_prefix=str(tmp_path / "ck"), **kw)


class WorkerDied(BaseException):
    """What a worker crash looks like from inside: the try ends, nothing runs after it."""


class CrashAfterLaunch(LocalBackend):
    crashes: ClassVar[int] = 1

    def launch(self, request: LaunchRequest):
        handle = super().launch(request)
        if CrashAfterLaunch.crashes:
            CrashAfterLaunch.crashes -= 1
            raise WorkerDied()
        return handle


class TestOperatorLoop:
    def test_retry_after_worker_crash_reattaches(self, tmp_path):
        CrashAfterLaunch.crashes = 1
        b = backend(tmp_path, cls=CrashAfterLaunch, env={"STEPS": "10"})
        op = operator(tmp_path, b)
        run = TaskRun()
        with pytest.raises(WorkerDied):
            run.run(op)
        stored = run.store.get(LEDGER_KEY)
        assert [a["outcome"] for a in stored["attempts"]] == ["launching"]
        run.new_try()
        summary = run.run(op)
        assert summary["outcome"] == "succeeded"
        assert [a["number"] for a in summary["attempts"]] == [1]
        assert summary["tries"] == [1, 2]
        # exactly one training process ever ran for attempt 1
        assert len((tmp_path / "start-1").read_text().split()) == 1
        assert sorted(p.name for p in (tmp_path / "state").glob("*/attempt-*")) == ["attempt-1"]

    def test_retry_reattaches_to_a_running_attempt(self, tmp_path):
        b = backend(tmp_path, env={"STEPS": "10"})
        op = operator(tmp_path, b)
        run = TaskRun()
        # the try ends while deferred (worker lost before the trigger fired); the attempt keeps running
        with pytest.raises(TaskDeferred):
            op.execute(run.context())
        run.new_try()
        summary = run.run(op)
        assert summary["outcome"] == "succeeded" and len(summary["attempts"]) == 1
        assert len((tmp_path / "start-1").read_text().split()) == 1

    def test_xcom_is_published_again_on_every_try(self, tmp_path):
        b = backend(tmp_path, env={"STEPS": "3"})
        op = operator(tmp_path, b)
        run = TaskRun()
        run.run(op)
        run.new_try()
        assert run.ti.xcoms == {}
        again = run.run(op)  # the attempt already succeeded: nothing is launched again
        assert run.ti.xcoms["checkpoint_prefix"] == str(tmp_path / "ck")
        assert run.ti.xcoms["ledger"]["outcome"] == "succeeded"
        assert len(again["attempts"]) == 1

    def test_waits_for_spot_capacity_then_escalates_at_max_spot_wait(self, tmp_path):
        trace = tmp_path / "trace.json"
        trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0] * 100}))
        b = backend(tmp_path, preemptions={"kind": "trace", "path": str(trace), "seconds_per_sample": 60})

        class WaitBriefly:
            def decide(self, state):
                if state.spot_unavailable:
                    return Decision(Action.WAIT, "no spot", 0.05)
                return Decision(Action.SPOT, "try spot")

        op = operator(tmp_path, b, escalation_policy=WaitBriefly(), max_spot_wait=0.2)
        run = TaskRun()
        summary = run.run(op)
        assert summary["outcome"] == "succeeded"
        outcomes = [a["outcome"] for a in summary["attempts"]]
        assert outcomes[-1] == "succeeded" and set(outcomes[:-1]) == {"capacity_unavailable"}
        assert summary["attempts"][-1]["capacity"] == "on_demand"
        assert "max_spot_wait" in summary["escalations"][0]["reason"]
        assert summary["spot_wait_seconds"] >= 0.2

    @pytest.mark.parametrize("deferrable", [True, False])
    def test_after_waiting_it_tries_spot_again(self, tmp_path, deferrable):
        # no spot for the first second of the run, then spot for good
        trace = tmp_path / "trace.json"
        trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0, 0] + [1] * 2000}))
        b = backend(tmp_path, preemptions={"kind": "trace", "path": str(trace), "seconds_per_sample": 0.5})
        op = operator(tmp_path, b, escalation_policy=ThresholdPolicy(wait_seconds=0.2), max_spot_wait=None,
                      deferrable=deferrable)
        summary = TaskRun().run(op)
        attempts = summary["attempts"]
        assert attempts[0]["outcome"] == "capacity_unavailable"
        assert attempts[-1]["capacity"] == "spot" and attempts[-1]["outcome"] == "succeeded"
        assert {a["capacity"] for a in attempts} == {"spot"}  # it never gave up on spot
        assert summary["spot_wait_seconds"] > 0

    def test_max_attempts_caps_relaunches(self, tmp_path):
        b = backend(tmp_path, env={"STEPS": "1000"}, preemptions=fixed_preemptions([0.3] * 10))
        op = operator(tmp_path, b, max_preemptions=None, max_attempts=2)
        run = TaskRun()
        with pytest.raises(AirflowFailException, match="max_attempts=2 reached"):
            run.run(op)
        assert run.store.get(LEDGER_KEY)["attempts"][-1]["preemptions"] == 1

    def test_deadline_already_past_launches_nothing(self, tmp_path):
        b = backend(tmp_path)
        op = operator(tmp_path, b, deadline="2020-01-01T00:00:00+00:00")
        with pytest.raises(AirflowFailException, match="is already past; nothing was launched"):
            TaskRun().run(op)
        assert not (tmp_path / "state").exists()

    def test_unwritable_prefix_fails_before_launch(self, tmp_path):
        (tmp_path / "file").write_text("x")
        b = backend(tmp_path)
        op = SpotTrainingOperator(task_id="train", backend=b, checkpoint_prefix=str(tmp_path / "file" / "ck"))
        with pytest.raises(AirflowFailException, match=r"checkpoint_prefix .* is not writable"):
            TaskRun().run(op)
        assert not (tmp_path / "state").exists()

    def test_blocking_mode_runs_the_same_loop(self, tmp_path):
        b = backend(tmp_path, env={"STEPS": "40"}, preemptions=fixed_preemptions([1.0]))
        op = operator(tmp_path, b, deferrable=False, max_preemptions=1)
        run = TaskRun()
        summary = run.run(op)
        assert run.deferrals == []
        assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
            ("spot", "preempted"), ("on_demand", "succeeded")]

    def test_genuine_failure_fails_the_try_with_the_reason(self, tmp_path):
        b = LocalBackend(command=[sys.executable, "-c", "import sys; sys.exit(7)"], state_dir=str(tmp_path / "s"))
        op = operator(tmp_path, b)
        run = TaskRun()
        with pytest.raises(AirflowException, match="attempt 1 on spot failed: training exited with code 7"):
            run.run(op)


class InPlaceBackend(LocalBackend):
    """A cloud that restarts an interrupted attempt by itself (like SageMaker managed spot):
    it reports running with a growing preemption count, read from a file the test writes."""

    def describe(self, handle):
        status = super().describe(handle)
        counter = Path(self.load_handle(handle).attempt_dir) / "interruptions"
        n = int(counter.read_text()) if counter.exists() else 0
        if not status.is_final:
            return AttemptStatus(state="running", preemptions=n, started_at=status.started_at)
        return status


class TestInterruptedInPlace:
    def test_counts_then_escalates_by_stopping_and_relaunching_on_demand(self, tmp_path):
        b = backend(tmp_path, cls=InPlaceBackend, env={"STEPS": "400", "DELAY": "0.02"})
        op = operator(tmp_path, b, max_preemptions=2)
        run = TaskRun()
        import threading
        import time

        def interrupt_twice():
            attempt_dir = None
            while attempt_dir is None:
                found = list((tmp_path / "state").glob("*/attempt-1"))
                attempt_dir = found[0] if found else None
                time.sleep(0.05)
            for n in (1, 2):
                time.sleep(0.5)
                (attempt_dir / "interruptions").write_text(str(n))

        t = threading.Thread(target=interrupt_twice, daemon=True)
        t.start()
        summary = run.run(op)
        t.join(5)
        assert summary["preemptions"] == 2
        a1, a2 = summary["attempts"]
        assert (a1["capacity"], a1["outcome"], a1["preemptions"]) == ("spot", "preempted", 2)
        assert "stopped to escalate" in a1["reason"]
        assert (a2["capacity"], a2["outcome"]) == ("on_demand", "succeeded")
        assert a2["start_step"] and a2["start_step"] > 0  # resumed from the spot job's checkpoints
        assert sum(1 for t in run.deferrals if t.attempt == 1) == 2  # re-deferred once, after the first


class MoveBackWhenSpotReturns:
    """On-demand while spot is unavailable; back to spot as soon as the backend sees it again."""

    def serialize_kwargs(self):
        return {}

    def decide(self, state):
        from airflow_spot_training.core.policy import Event

        if state.event is Event.TICK:
            if state.spot_available:
                return Decision(Action.SPOT, "spot is back")
            return Decision(Action.ON_DEMAND, "stay")
        if state.spot_unavailable:
            return Decision(Action.ON_DEMAND, "no spot now")
        return Decision(Action.SPOT, "spot")


class MoveBackOnceSpotStayed(MoveBackWhenSpotReturns):
    """Like its parent, but leaves on-demand only once spot has been seen available for a second."""

    def decide(self, state):
        from airflow_spot_training.core.policy import Event

        if state.event is Event.TICK and state.spot_available_for is not None and state.spot_available_for >= 1.0:
            return Decision(Action.SPOT, f"spot seen for {state.spot_available_for:.2f} s")
        if state.event is Event.TICK:
            return Decision(Action.ON_DEMAND, "stay")
        return super().decide(state)


class TestReturnToSpot:
    def test_the_policy_is_told_how_long_spot_has_been_seen(self, tmp_path):
        trace = tmp_path / "trace.json"
        trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0, 0] + [1] * 1000}))
        b = backend(tmp_path, env={"STEPS": "200", "DELAY": "0.05"},
                    preemptions={"kind": "trace", "path": str(trace), "seconds_per_sample": 1.5})
        op = operator(tmp_path, b, escalation_policy=MoveBackOnceSpotStayed(), return_to_spot=True)
        summary = TaskRun().run(op)
        got = [(a["capacity"], a["outcome"]) for a in summary["attempts"]]
        assert got == [("spot", "capacity_unavailable"), ("on_demand", "stopped"), ("spot", "succeeded")]
        reason = summary["attempts"][1]["reason"]
        assert reason.startswith("moved back to spot: spot seen for ")
        assert float(reason.split()[-2]) >= 1.0

    def test_on_demand_attempt_checkpoints_stops_and_spot_takes_over(self, tmp_path):
        trace = tmp_path / "trace.json"
        trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0, 0] + [1] * 1000}))
        b = backend(tmp_path, env={"STEPS": "120", "DELAY": "0.05"},
                    preemptions={"kind": "trace", "path": str(trace), "seconds_per_sample": 1.5})
        op = operator(tmp_path, b, escalation_policy=MoveBackWhenSpotReturns(), return_to_spot=True)
        run = TaskRun()
        summary = run.run(op)
        got = [(a["capacity"], a["outcome"]) for a in summary["attempts"]]
        assert got == [("spot", "capacity_unavailable"), ("on_demand", "stopped"), ("spot", "succeeded")]
        assert [e["to"] for e in summary["escalations"]] == ["on_demand", "spot"]
        on_demand, spot = summary["attempts"][1], summary["attempts"][2]
        assert on_demand["reason"] == "moved back to spot: spot is back"
        assert spot["start_step"] == on_demand["checkpoint_step"] > 0  # resumed where on-demand stopped

    def test_needs_a_serializable_policy(self, tmp_path):
        class Opaque:
            def decide(self, state):
                return Decision(Action.SPOT, "x")

        with pytest.raises(Exception, match="return_to_spot=True: .*serialize_kwargs"):
            operator(tmp_path, backend(tmp_path), escalation_policy=Opaque(), return_to_spot=True)


class TestPolicyByName:
    def test_named_policies(self, tmp_path):
        from airflow_spot_training.core.policies import DeadlineAwarePolicy

        op = operator(tmp_path, backend(tmp_path), escalation_policy="deadline_aware")
        assert isinstance(op.escalation_policy, DeadlineAwarePolicy)
        op = operator(tmp_path, backend(tmp_path), escalation_policy="threshold", max_preemptions=5)
        assert op.escalation_policy.max_preemptions == 5

    def test_unknown_name(self, tmp_path):
        with pytest.raises(Exception, match=r"escalation_policy='cheapest' is not a known policy; choose one of"):
            operator(tmp_path, backend(tmp_path), escalation_policy="cheapest")

    def test_infeasible_deadline_fails_at_parse_time(self, tmp_path):
        with pytest.raises(Exception, match=r"deadline='1h' with expected_runtime=7200 s: .*infeasible"):
            operator(tmp_path, backend(tmp_path), deadline="1h", expected_runtime=7200)

    def test_infeasible_absolute_deadline_fails_before_launch(self, tmp_path):
        import datetime as dt

        soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)).isoformat()
        op = operator(tmp_path, backend(tmp_path), deadline=soon, expected_runtime=7200)
        with pytest.raises(AirflowFailException, match="infeasible.*nothing was launched"):
            TaskRun().run(op)
        assert not (tmp_path / "state").exists()
