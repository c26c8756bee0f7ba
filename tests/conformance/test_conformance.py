"""The backend conformance suite: every scenario on all five backends.

Each scenario drives the real ``SpotTrainingOperator`` through the in-process task runner
(:mod:`tests.conformance.harness`), with a real training process on each attempt's machine
(:mod:`tests.conformance.clouds`), and asserts three things: the ledger (the task's result
and the ledger in the task state store), the calls the backend made to its cloud, and
what is still alive at the end. The steps a training really computed come from its own
log lines, never from the ledger.

A scenario that a backend fails today is marked ``xfail(strict=True)`` with the defect
in one line (the table :data:`KNOWN`); a fix turns it into an XPASS, which fails the
suite until the mark is removed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.conformance.clouds import BACKENDS, Cloud, Training
from tests.conformance.fleet import executed_steps, recomputed, wait_until
from tests.conformance.harness import TaskRun

#: scenario -> backend -> the defect that makes it fail today
KNOWN: dict[str, dict[str, str]] = {}


def backends(scenario: str, only: list[str] | None = None, skip: dict[str, Any] | None = None) -> list[Any]:
    """The backends a scenario runs on, with the known failures marked (and the meaningless skipped)."""
    params = []
    for name in only or BACKENDS:
        reason = KNOWN.get(scenario, {}).get(name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        if skip and name in skip:
            marks = [skip[name]]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def attempts(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["capacity"], a["outcome"]) for a in summary["attempts"]]


def assert_nothing_left(cloud: Cloud) -> None:
    cloud.settle()
    assert cloud.live_resources() == 0 and cloud.live_processes() == 0


@pytest.mark.parametrize("cloud", backends("reclaim_after_notice"), indirect=True)
def test_a_reclaim_after_the_notice_is_a_preemption_and_escalates_at_the_threshold(cloud: Cloud) -> None:
    """The guide's pattern: notice caught, emergency checkpoint, exit 143 -> a counted preemption."""
    training = Training(steps=12, every=4)
    cloud.reclaim(attempt=1, when=r"^step 6 ")
    run = TaskRun()
    outcome = run.run_try(cloud.operator(training, cloud.prefix(), max_preemptions=1))

    assert outcome.error is None, outcome.error
    summary = outcome.result
    assert attempts(summary) == [("spot", "preempted"), ("on_demand", "succeeded")]
    assert summary["preemptions"] == 1
    assert [e["to"] for e in summary["escalations"]] == ["on_demand"]
    assert "max_preemptions=1" in summary["escalations"][0]["reason"]
    logs = cloud.logs()
    assert recomputed(logs) == 0 and summary["recomputed_steps"] == 0  # the emergency checkpoint kept every step
    assert set(executed_steps(logs)) == set(range(1, 13))
    second_start = summary["attempts"][1]["start_step"]
    assert second_start is not None and second_start >= 6  # resumed from the emergency checkpoint
    assert summary["final_checkpoint_step"] == 12
    calls = cloud.recorded_calls()
    assert calls.launches == ["spot", "on_demand"]
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("hard_kill"), indirect=True)
def test_a_hard_kill_without_notice_handling_counts_the_steps_done_twice(cloud: Cloud) -> None:
    """No notice handling: the machine is frozen past step 3 and killed; attempt 2 redoes steps 1-3+."""
    training = Training(script="no_notice.py", steps=16, every=8, step_seconds=0.1)
    cloud.reclaim(attempt=1, when=r"^step 3 ", notice=False)
    outcome = TaskRun().run_try(cloud.operator(training, cloud.prefix(), max_preemptions=1))

    assert outcome.error is None, outcome.error
    summary = outcome.result
    assert attempts(summary) == [("spot", "preempted"), ("on_demand", "succeeded")]
    assert summary["preemptions"] == 1
    truth = recomputed(cloud.logs())
    assert truth >= 3, f"the premise: the kill landed past step 3 before any checkpoint ({truth} steps redone)"
    assert summary["recomputed_steps"] == truth
    assert cloud.recorded_calls().launches == ["spot", "on_demand"]
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("notice_after_final_commit"), indirect=True)
def test_a_notice_after_the_final_commit_is_a_success(cloud: Cloud) -> None:
    """The training committed its last step and its metrics, then the notice came: it succeeded."""
    training = Training(script="exports_after_training.py", steps=8, every=4)
    cloud.reclaim(attempt=1, when=r"^exporting the model")
    outcome = TaskRun().run_try(cloud.operator(training, cloud.prefix(), max_preemptions=3))

    assert outcome.error is None, outcome.error
    summary = outcome.result
    assert attempts(summary) == [("spot", "succeeded")]
    assert summary["preemptions"] == 0 and summary["final_checkpoint_step"] == 8
    assert executed_steps(cloud.logs()) == {step: 1 for step in range(1, 9)}
    assert cloud.recorded_calls().launches == ["spot"]
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("reclaim_after_result_record", only=["ec2", "compute_engine"]),
                         indirect=True)
def test_a_reclaim_after_the_result_record_is_a_success(cloud: Cloud) -> None:
    """The bootstrap wrote the success record; the machine was reclaimed before it shut itself down.

    Only the VM backends write result records (the managed ones end with their job)."""
    cloud.reclaim(attempt=1, at_shutdown=True)
    outcome = TaskRun().run_try(cloud.operator(Training(steps=8, every=4), cloud.prefix(), max_preemptions=3))

    assert outcome.error is None, outcome.error
    assert attempts(outcome.result) == [("spot", "succeeded")]
    assert outcome.result["preemptions"] == 0
    assert cloud.recorded_calls().launches == ["spot"]
    assert_nothing_left(cloud)


STALE_RESULT = json.dumps({"exit_code": 0, "attempt": 1, "token": "another-run-a1", "finished_at": 1.0}).encode()


def plant_stale_records(cloud: Cloud, prefix: str) -> None:
    """What an earlier run of another task left at the same prefix: a success and its metrics."""
    cloud.write(prefix, "_results/attempt-1.json", STALE_RESULT)
    cloud.write(prefix, "_results/attempt-1.metrics.json", json.dumps({"final_loss": 123.0}).encode())


@pytest.mark.parametrize("cloud", backends("stale_result_record"), indirect=True)
def test_a_result_record_left_by_an_earlier_run_is_ignored(cloud: Cloud) -> None:
    prefix = cloud.prefix()
    plant_stale_records(cloud, prefix)
    outcome = TaskRun().run_try(cloud.operator(Training(steps=8, every=4), prefix, max_preemptions=3))

    assert outcome.error is None, outcome.error
    assert attempts(outcome.result) == [("spot", "succeeded")]
    assert executed_steps(cloud.logs()) == {step: 1 for step in range(1, 9)}  # it really trained
    assert outcome.result["metrics"]["final_loss"] != 123.0
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("stale_result_record_no_training"), indirect=True)
def test_a_stale_result_record_never_makes_an_attempt_that_did_not_train_succeed(cloud: Cloud) -> None:
    """The same stale records; this attempt's machine fails before the training starts."""
    prefix = cloud.prefix()
    plant_stale_records(cloud, prefix)
    cloud.fail_to_start.add(1)
    run = TaskRun()
    outcome = run.run_try(cloud.operator(Training(steps=8, every=4), prefix, max_preemptions=3))

    assert outcome.error is not None, f"succeeded without a training: {outcome.result}"
    assert [a["outcome"] for a in run.ledger()["attempts"]] == ["failed"]
    assert executed_steps(cloud.logs()) == {}
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("short_spot_outage"), indirect=True)
def test_after_a_spot_outage_shorter_than_the_wait_spot_is_tried_again(cloud: Cloud) -> None:
    """No spot capacity at the first launch only: after one wait, spot again (never on-demand)."""
    cloud.spot_outage()
    operator = cloud.operator(Training(steps=8, every=4), cloud.prefix(),
                              escalation_policy=cloud.outage_policy(), max_spot_wait=3)
    outcome = TaskRun().run_try(operator)

    assert outcome.error is None, outcome.error
    outcomes = attempts(outcome.result)
    assert outcomes[-1] == ("spot", "succeeded")
    assert outcomes[:-1] and set(outcomes[:-1]) == {("spot", "capacity_unavailable")}
    assert "on_demand" not in cloud.recorded_calls().launches
    assert_nothing_left(cloud)


NO_LOCAL_CAPACITY = pytest.mark.skip(reason="the local backend's on-demand capacity never runs out")


@pytest.mark.parametrize("cloud", backends("no_capacity_anywhere", skip={"local": NO_LOCAL_CAPACITY}),
                         indirect=True)
def test_no_capacity_anywhere_fails_clearly_naming_the_pools(cloud: Cloud) -> None:
    """Every pool exhausted, spot and on-demand: bounded waiting, then one clear failure."""
    from airflow.sdk.exceptions import AirflowFailException

    cloud.no_capacity_at_all = True
    operator = cloud.operator(Training(steps=8, every=4), cloud.prefix(), escalation_policy=cloud.outage_policy(),
                              max_spot_wait=2, max_on_demand_wait=2, capacity_retry_interval=0.5,
                              max_capacity_attempts=12)
    run = TaskRun()
    outcome = run.run_try(operator, max_deferrals=30)

    assert isinstance(outcome.error, AirflowFailException), repr(outcome.error)
    assert "no on-demand capacity" in str(outcome.error) and "max_on_demand_wait" in str(outcome.error)
    for pool in cloud.pools():
        assert pool in str(outcome.error)
    recorded = run.ledger()["attempts"]
    assert {a["outcome"] for a in recorded} == {"capacity_unavailable"}
    assert {a["capacity"] for a in recorded} == {"spot", "on_demand"}  # waited for spot, then on-demand
    assert len(recorded) <= 12  # every capacity-unavailable launch counts toward max_capacity_attempts
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("no_capacity_anywhere", skip={"local": NO_LOCAL_CAPACITY}),
                         indirect=True)
def test_launches_that_find_no_capacity_are_capped(cloud: Cloud) -> None:
    """The same outage with waits of almost nothing: the count cap, not the clock, ends it."""
    from airflow.sdk.exceptions import AirflowFailException

    cloud.no_capacity_at_all = True
    operator = cloud.operator(Training(steps=8, every=4), cloud.prefix(), escalation_policy=cloud.outage_policy(),
                              max_spot_wait=0, max_on_demand_wait=3600, capacity_retry_interval=0.01,
                              max_capacity_attempts=3)
    run = TaskRun()
    outcome = run.run_try(operator, max_deferrals=30)

    assert isinstance(outcome.error, AirflowFailException), repr(outcome.error)
    assert "max_capacity_attempts=3" in str(outcome.error)
    assert len(run.ledger()["attempts"]) == 3
    assert_nothing_left(cloud)


NO_LOCAL_API = pytest.mark.skip(reason="the local backend calls no cloud API that could fail or throttle")


@pytest.mark.parametrize("cloud", backends("poll_failures", skip={"local": NO_LOCAL_API}), indirect=True)
def test_polling_that_fails_past_its_limit_never_leaves_two_attempts_running(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status API refuses every poll (expired credentials) until the trigger gives up; then it
    recovers and Airflow retries: the retry re-attaches, or stops attempt 1 before launching."""
    from airflow_spot_training.triggers import spot_training as trigger_module

    monkeypatch.setattr(trigger_module, "MAX_POLL_ERRORS", 3)  # reached in a second, not in hours of backoff
    training = Training(steps=400, every=10, step_seconds=0.05)
    run = TaskRun()

    def api_goes_down(trigger: Any) -> None:
        cloud.status_api_down = True

    first = run.run_try(cloud.operator(training, cloud.prefix()), on_defer=api_goes_down)
    assert first.error is not None
    cloud.status_api_down = False
    # Airflow retries after retry_delay (minutes): a machine whose job, VM or instance the first
    # try stopped has finished going away by then (a cancelled job's container gets its grace)
    wait_until(lambda: cloud.live_processes() <= cloud.live_resources(), what="the stopped attempt's machine ended")
    second = run.run_try(cloud.operator(training, cloud.prefix()), until_deferral=1)

    assert second.parked is not None, second.error
    assert cloud.live_resources() <= 1 and cloud.live_processes() <= 1
    assert cloud.max_concurrent() == 1
    calls = cloud.recorded_calls()
    assert len(calls.launches) == 1 or len(calls.stops) >= 1


@pytest.mark.parametrize("cloud", backends("throttling", skip={"local": NO_LOCAL_API}), indirect=True)
def test_throttling_at_launch_and_poll_is_retried_with_backoff(cloud: Cloud) -> None:
    """Two launch calls and two polls answer "rate exceeded" / 5xx: retried, never a failed task."""
    cloud.throttle_launches = 2
    cloud.throttle_polls = 2
    outcome = TaskRun().run_try(cloud.operator(Training(steps=8, every=4), cloud.prefix()))

    assert outcome.error is None, outcome.error
    assert attempts(outcome.result) == [("spot", "succeeded")]
    calls = cloud.recorded_calls()
    assert calls.launches == ["spot"] and len(calls.refused) == 2
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("killed_during_launch"), indirect=True)
def test_a_task_killed_while_launching_leaves_nothing_running(cloud: Cloud) -> None:
    """``on_kill()`` arrives (Airflow's SIGTERM handler) while ``execute()`` is inside ``launch()``."""
    run = TaskRun()
    operator = cloud.operator(Training(steps=2000, every=100, step_seconds=0.05), cloud.prefix())
    with cloud.launches_blocked(run) as gate:
        worker = threading.Thread(target=run.run_try, args=(operator,), kwargs={"until_deferral": 1}, daemon=True)
        worker.start()
        wait_until(lambda: cloud.launch_blocked.is_set() and _launching(run), 60, "execute() inside launch()")
        killer = threading.Thread(target=operator.on_kill, daemon=True)
        killer.start()
        killer.join(2)  # a kill that waits for the launch is fine: the launch ends below
        gate.set()
    worker.join(60)
    killer.join(60)
    assert not worker.is_alive() and not killer.is_alive()
    assert cloud.live_resources() == 0, "an instance, VM or job of the killed task is still running"
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("nan_metric"), indirect=True)
def test_a_nan_or_infinite_metric_is_reported_as_null_with_a_warning(
        cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    training = Training(script="odd_metrics.py", steps=4, every=2, extra=["--kind", "nan"])
    outcome = TaskRun().run_try(cloud.operator(training, cloud.prefix()))

    assert outcome.error is None, outcome.error
    assert attempts(outcome.result) == [("spot", "succeeded")]
    metrics = outcome.result["metrics"]
    assert "final_loss" in metrics and metrics["final_loss"] is None
    assert "max_gradient" in metrics and metrics["max_gradient"] is None
    assert any("final_loss" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert_nothing_left(cloud)


MALFORMED_COMMIT = "step-000000000999/COMMIT.json"


@pytest.mark.parametrize("cloud", backends("malformed_commit"), indirect=True)
def test_a_malformed_commit_record_is_named(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    """A commit record that is a JSON list: ignored with a warning naming it, or a failure naming it."""
    prefix = cloud.prefix()
    cloud.write(prefix, MALFORMED_COMMIT, b"[]")
    cloud.write(prefix, "step-000000000999/state.json", b"{}")
    outcome = TaskRun().run_try(cloud.operator(Training(steps=8, every=4), prefix))

    said = (str(outcome.error) if outcome.error else "") + caplog.text
    assert MALFORMED_COMMIT in said
    assert "has no attribute" not in str(outcome.error or "")
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("malformed_metrics"), indirect=True)
def test_metrics_of_the_wrong_type_are_named(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    """The training's metrics record is a list, not an object."""
    training = Training(script="odd_metrics.py", steps=4, every=2, extra=["--kind", "list"])
    outcome = TaskRun().run_try(cloud.operator(training, cloud.prefix()))

    said = (str(outcome.error) if outcome.error else "") + caplog.text
    assert "attempt-1.metrics.json" in said
    if outcome.error is None:
        assert outcome.result["metrics"] == {}
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("malformed_result", only=["ec2", "compute_engine"]), indirect=True)
def test_a_malformed_result_record_is_named(cloud: Cloud, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """``_results/attempt-1.json`` is a JSON list (left by another writer) when the attempt starts."""
    from airflow_spot_training.triggers import spot_training as trigger_module

    monkeypatch.setattr(trigger_module, "MAX_POLL_ERRORS", 3)
    prefix = cloud.prefix()
    cloud.write(prefix, "_results/attempt-1.json", b"[0]")
    outcome = TaskRun().run_try(cloud.operator(Training(steps=8, every=4), prefix))

    said = (str(outcome.error) if outcome.error else "") + caplog.text
    if outcome.error is not None:
        assert "_results/attempt-1.json" in said
    else:
        assert attempts(outcome.result) == [("spot", "succeeded")]
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("malformed_ledger"), indirect=True)
def test_a_malformed_ledger_fails_naming_it(cloud: Cloud) -> None:
    """The task state store holds a list under the ledger's key (written by something else)."""
    from airflow_spot_training.operators.spot_training import LEDGER_KEY

    run = TaskRun()
    run.store.set(LEDGER_KEY, ["not", "a", "ledger"])
    outcome = run.run_try(cloud.operator(Training(steps=8, every=4), cloud.prefix()))

    assert outcome.error is not None
    assert LEDGER_KEY in str(outcome.error)
    assert cloud.recorded_calls().launches == []
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("retry_after_deadline"), indirect=True)
def test_a_retry_after_the_deadline_fails_without_launching(cloud: Cloud) -> None:
    """Try 1's training fails; Airflow's retry starts after the deadline: no launch past it."""
    from airflow.sdk.exceptions import AirflowFailException

    run = TaskRun()
    make = lambda: cloud.operator(Training(script="crashes.py"), cloud.prefix(),  # noqa: E731
                                  deadline=timedelta(seconds=2), retries=1)
    first = run.run_try(make())
    assert first.error is not None and "exited" in str(first.error)
    deadline = run.ledger()["deadline"]
    wait_until(lambda: time.time() > deadline + 0.2, 30, "the deadline passing")
    second = run.run_try(make())

    assert isinstance(second.error, AirflowFailException), repr(second.error)
    assert "deadline" in str(second.error)
    assert len(cloud.recorded_calls().launches) == 1
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("describe_side_effects"), indirect=True)
def test_describe_has_no_side_effects(cloud: Cloud) -> None:
    """Reading an attempt's status, pending, running or finished, never stops, deletes or cancels it."""
    # Vertex AI is the backend with a pending timeout: give it one that has passed
    options = {"max_pending_seconds": 0.001} if cloud.name == "vertex_ai" else {}
    operator = cloud.operator(Training(steps=8, every=4, step_seconds=0.1), cloud.prefix(), backend_options=options)
    cloud.starts_released.clear()  # machines exist but have not booted: pending
    parked = TaskRun().run_try(operator, until_deferral=1).parked
    assert parked is not None
    backend, handle = operator.backend, parked.handle
    seen = [backend.describe(handle).state for _ in range(2)]
    cloud.starts_released.set()
    wait_until(lambda: cloud.live_processes() > 0 or cloud.live_resources() == 0, 30, "the machine booting")
    seen += [backend.describe(handle).state for _ in range(2)]
    cloud.settle()  # the training ends by itself
    final = [backend.describe(handle).state for _ in range(2)]

    assert cloud.recorded_calls().stops == [], f"describe() stopped the attempt (states seen: {seen})"
    assert final == ["succeeded", "succeeded"]


def _launching(run: TaskRun) -> bool:
    ledger = run.ledger()
    return bool(ledger and ledger["attempts"] and ledger["attempts"][-1]["outcome"] == "launching")


SAGEMAKER_SYNCS_ITSELF = pytest.mark.skip(
    reason="SageMaker syncs CheckpointConfig.LocalPath itself; checkpoint_sync is for the other backends")


@pytest.mark.parametrize("cloud", backends("synced_folder", skip={"sagemaker": SAGEMAKER_SYNCS_ITSELF}),
                         indirect=True)
def test_a_plain_script_under_the_synced_folder_resumes_from_its_last_finished_write(cloud: Cloud) -> None:
    """The training only writes files into a local folder; the backend's checkpoint_sync does the rest."""
    training = Training(script="plain_folder.py", steps=12, every=3, extra=["--pause-at", "7"])
    # the reclaim comes once the wrapper committed state-6, the newest write, whatever the machine's speed
    cloud.reclaim(attempt=1, when=r'"action": "committed".*"step": 6\b')
    sync: dict[str, object] = {"settle_seconds": 0.2, "poll_seconds": 0.05}
    if cloud.name != "local":  # local: a folder in each attempt's own directory already
        sync["local_dir"] = str(cloud.fleet.local_disk)  # not /mnt/checkpoint: each machine's own folder
    outcome = TaskRun().run_try(cloud.operator(training, cloud.prefix(), max_preemptions=1,
                                               backend_options={"checkpoint_sync": sync}))

    assert outcome.error is None, outcome.error
    summary = outcome.result
    assert attempts(summary) == [("spot", "preempted"), ("on_demand", "succeeded")]
    logs = cloud.logs()
    assert any("attempt 2: starting at step 6" in log for log in logs)  # restored the newest finished write
    assert any('"action": "restored", ' in log and '"step": 6,' in log for log in logs)  # from the prefix
    assert any("done at step 12 total 66" in log for log in logs)  # no step lost or counted twice
    assert summary["attempts"][1]["start_step"] == 6 and summary["final_checkpoint_step"] == 12
    assert_nothing_left(cloud)


LEAKED_KEY = "wandb-key-3f9a1c77e0b24d5e"


def _shown_training_log(task_log: str) -> str:
    """The operator's message with the training's last lines (the task log is its stdout here)."""
    start = task_log.find("lines of attempt 1's training log")
    assert start >= 0, f"no training log lines in the task log:\n{task_log}"
    return task_log[start:task_log.find("spot_training.py", start)]


@pytest.mark.parametrize("cloud", backends("failure_log"), indirect=True)
def test_a_failed_attempt_shows_its_last_lines_in_the_task_log_with_secrets_redacted(
        cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    training = Training(script="fails_loudly.py", steps=3, every=1)
    run = TaskRun()
    outcome = run.run_try(cloud.operator(training, cloud.prefix(),
                                         backend_options=cloud.env_option({"WANDB_API_KEY": LEAKED_KEY})))

    assert outcome.error is not None and "failed" in str(outcome.error)
    task_log = capsys.readouterr().out
    shown = _shown_training_log(task_log)
    assert "ValueError: the loss diverged at step 3" in shown  # the traceback's last line
    assert "step 3 loss 0.3333" in shown
    ledger = json.dumps(run.ledger())
    for secret in (LEAKED_KEY, "hunter2-db-password", "AKIAQ3EXAMPLEKEY7XYZ"):
        assert secret not in task_log and secret not in str(outcome.error) and secret not in ledger
    assert "postgresql://trainer:***@db.internal" in shown and "wandb_api_key=***" in shown
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("failure_log_cloudwatch", only=["ec2"]), indirect=True)
def test_an_ec2_training_ships_its_output_to_cloudwatch_redacted_on_the_machine(
        cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    logs = boto3.client("logs", region_name="us-east-1")
    logs.create_log_group(logGroupName="/spot-training/conformance")
    options = {"log_group": "/spot-training/conformance", **cloud.env_option({"WANDB_API_KEY": LEAKED_KEY})}
    outcome = TaskRun().run_try(cloud.operator(Training(script="fails_loudly.py", steps=3, every=1), cloud.prefix(),
                                               backend_options=options))

    assert outcome.error is not None
    shown = _shown_training_log(capsys.readouterr().out)
    assert "CloudWatch Logs /spot-training/conformance/" in shown
    assert "ValueError: the loss diverged at step 3" in shown
    streams = logs.describe_log_streams(logGroupName="/spot-training/conformance")["logStreams"]
    assert len(streams) == 1  # one stream per attempt, named after its token
    shipped = "\n".join(event["message"] for event in logs.get_log_events(
        logGroupName="/spot-training/conformance", logStreamName=streams[0]["logStreamName"],
        startFromHead=True)["events"])
    assert "step 1 loss 1.0000" in shipped and "training exited with code 1" in shipped
    assert LEAKED_KEY not in shipped and "hunter2-db-password" not in shipped  # masked before it left
    assert_nothing_left(cloud)


@pytest.mark.parametrize("cloud", backends("warm_start"), indirect=True)
def test_a_warm_start_begins_at_the_previous_runs_final_checkpoint_and_commits_to_its_own_prefix(
        cloud: Cloud) -> None:
    """init_from= reaches the training through the contract on every backend (SPOT_TRAINING_INIT_URI)."""
    first = TaskRun(run_id="scheduled__2026-01-04T00:00:00+00:00").run_try(
        cloud.operator(Training(steps=8, every=4), cloud.prefix("week1")))
    assert first.error is None, first.error
    logs_of_week1 = len(cloud.logs())
    second = TaskRun(run_id="scheduled__2026-01-11T00:00:00+00:00").run_try(
        cloud.operator(Training(steps=12, every=4), cloud.prefix("week2"), init_from=cloud.prefix("week1")))

    assert second.error is None, second.error
    summary = second.result
    assert summary["init_uri"] == first.result["final_checkpoint_uri"] and summary["init_step"] == 8
    assert attempts(summary) == [("spot", "succeeded")]
    week2 = cloud.logs()[logs_of_week1:]
    assert set(executed_steps(week2)) == set(range(9, 13))  # started at week 1's step 8, not from scratch
    assert any("starting at step 8" in text for text in week2)
    assert summary["final_checkpoint_step"] == 12 and "week2" in summary["final_checkpoint_uri"]
    assert first.result["final_checkpoint_uri"].endswith("step-000000000008")  # week 1's model is untouched
    assert_nothing_left(cloud)
