"""ComputeEngineSpotTrainingOperator end to end: real operator + trigger + google-cloud-compute client,
a fake Compute Engine on loopback, and the test playing the VM's training."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_spot_training.operators.compute_engine import ComputeEngineSpotTrainingOperator
from airflow_spot_training.operators.spot_training import LEDGER_KEY
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests.e2e.operator_harness import TaskStateStore, rebuild_trigger, run_try
from tests.fakes.gce_server import GCEServer

ZONES = ["us-central1-a", "us-central1-b"]
TOTAL = 300


@pytest.fixture
def server():
    with GCEServer() as s:
        yield s


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'ckpt'}"


def make_operator(server: GCEServer, prefix: str, **kwargs) -> ComputeEngineSpotTrainingOperator:
    return ComputeEngineSpotTrainingOperator(
        task_id="train", zones=ZONES, machine_type="n1-standard-4", command="python3 /opt/train.py",
        project_id="test-project", checkpoint_prefix=prefix, poll_interval=0.05,
        emulator_host=server.endpoint, spot_price_per_hour=0.05, on_demand_price_per_hour=0.19,
        service_account="trainer@test-project.iam.gserviceaccount.com",
        **kwargs,
    )


class VM:
    """Plays the training on the VM the last insert created, from its metadata."""

    def __init__(self, server: GCEServer) -> None:
        self.server = server

    def last(self) -> tuple[str, dict[str, str]]:
        body = self.server.fake.inserts()[-1].body
        metadata = {i["key"]: i["value"] for i in body["metadata"]["items"]}
        return body["name"], json.loads(metadata["spot-training-env"])

    def train(self, until: int) -> int | None:
        """Resume from the newest committed checkpoint, train to ``until``; return the step resumed from."""
        _, env = self.last()
        manager = CheckpointManager(env["SPOT_TRAINING_CHECKPOINT_URI"], keep_last=None)
        latest = manager.latest()
        start = latest.step if latest else None
        for step in range((start or 0) + 50, until + 1, 50):
            manager.save(step, {"model.pt": f"weights@{step}".encode()}, total_steps=TOTAL,
                         attempt=int(env["SPOT_TRAINING_ATTEMPT"]))
        return start

    def finish(self, exit_code: int = 0) -> None:
        """What the startup script does at the end: the result record, then delete the VM."""
        name, env = self.last()
        path = Path(env["SPOT_TRAINING_RESULT_URI"].removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"exit_code": exit_code, "attempt": int(env["SPOT_TRAINING_ATTEMPT"]),
                                    "finished_at": 2.0e9, "token": env["SPOT_TRAINING_TOKEN"]}))
        self.server.fake.finish(name)


def test_preempted_then_escalated_then_success_with_resume(server, prefix):
    vm = VM(server)
    resumed_from: list[int | None] = []

    def cloud(deferred):
        attempt = deferred.trigger.attempt
        if attempt == 1:
            resumed_from.append(vm.train(until=100))
            server.fake.preempt(vm.last()[0])
        else:
            resumed_from.append(vm.train(until=TOTAL))
            vm.finish(0)

    store = TaskStateStore()
    outcome = run_try(make_operator(server, prefix, max_preemptions=1), store, 1, on_defer=cloud)
    summary = outcome.result

    assert summary["outcome"] == "succeeded"
    assert summary["preemptions"] == 1
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "preempted"), ("on_demand", "succeeded")]
    assert len(summary["escalations"]) == 1 and summary["escalations"][0]["to"] == "on_demand"
    assert summary["attempts"][1]["start_step"] == 100  # the operator saw where attempt 2 resumes
    assert resumed_from == [None, 100]  # and the training did resume there
    inserts = server.fake.inserts()
    assert [r.body["scheduling"]["provisioningModel"] for r in inserts] == ["SPOT", "STANDARD"]
    envs = [json.loads({i["key"]: i["value"] for i in r.body["metadata"]["items"]}["spot-training-env"])
            for r in inserts]
    assert {e["SPOT_TRAINING_CHECKPOINT_URI"] for e in envs} == {prefix}
    assert [e["SPOT_TRAINING_ATTEMPT"] for e in envs] == ["1", "2"]
    assert server.fake.live_instances() == []
    ledger = store.get(LEDGER_KEY)
    assert ledger["attempts"][0]["reason"].startswith("compute.instances.preempted")
    for number, insert in enumerate(inserts, start=1):  # every attempt keeps its console page
        assert outcome.ti.xcom[f"spot_training_attempt_{number}_compute_engine_vm"].endswith(
            f"/instances/{insert.body['name']}?project=test-project")
    assert [a["links"][0]["name"] for a in ledger["attempts"]] == ["Compute Engine VM"] * 2


def test_zone_out_of_capacity_launches_in_the_next(server, prefix):
    server.fake.exhausted_zones.add("us-central1-a")
    vm = VM(server)
    outcome = run_try(make_operator(server, prefix), TaskStateStore(), 1,
                      on_defer=lambda d: (vm.train(until=TOTAL), vm.finish(0)))
    summary = outcome.result
    assert summary["outcome"] == "succeeded"
    assert summary["attempts"][0]["pool"] == "us-central1-b"
    assert [r.path.split("/")[6] for r in server.fake.inserts()] == ["us-central1-a", "us-central1-b"]


@pytest.mark.parametrize("crash_inside_launch", [False, True])
def test_retry_after_a_worker_crash_reattaches_without_a_second_vm(server, prefix, crash_inside_launch):
    store = TaskStateStore()
    first = run_try(make_operator(server, prefix), store, 1, stop_after_deferrals=1)  # the worker dies
    assert len(first.deferrals) == 1 and len(server.fake.live_instances()) == 1
    if crash_inside_launch:  # died after insert, before the handle was saved
        ledger = store.get(LEDGER_KEY)
        ledger["attempts"][-1].update(handle=None, outcome="launching")
        store.set(LEDGER_KEY, ledger)

    vm = VM(server)
    second = run_try(make_operator(server, prefix), store, 2,  # a fresh operator, as after a re-parse
                     on_defer=lambda d: (vm.train(until=TOTAL), vm.finish(0)))
    summary = second.result
    assert summary["outcome"] == "succeeded"
    assert len(summary["attempts"]) == 1 and summary["tries"] == [1, 2]
    assert len(server.fake.inserts()) == 1  # no second VM
    assert second.deferrals[0].trigger.handle["name"] == first.deferrals[0].trigger.handle["name"]


def test_task_killed_while_deferred_deletes_the_vm(server, prefix):
    outcome = run_try(make_operator(server, prefix), TaskStateStore(), 1, stop_after_deferrals=1)
    trigger = rebuild_trigger(outcome.deferrals[0].trigger)
    asyncio.run(trigger.on_kill())
    assert server.fake.live_instances() == []
    assert server.fake.calls("DELETE", outcome.deferrals[0].trigger.handle["name"])


def test_task_killed_in_blocking_mode_deletes_the_vm(server, prefix):
    import threading

    op = make_operator(server, prefix, deferrable=False)
    errors: list[BaseException] = []

    def run():
        try:
            run_try(op, TaskStateStore(), 1)
        except BaseException as e:  # the attempt ends "failed" once its VM is gone
            errors.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while not server.fake.live_instances():
        worker.join(0.02)
    while getattr(op, "_live_handle", None) is None:
        worker.join(0.02)
    op.on_kill()
    worker.join(30)
    assert server.fake.live_instances() == []
    assert not worker.is_alive()


def test_quota_error_fails_the_task_with_an_actionable_message(server, prefix):
    server.fake.quota_exceeded = {"metric": "compute.googleapis.com/preemptible_cpus",
                                  "limit_name": "PREEMPTIBLE-CPUS-per-project-region", "region": "us-central1"}
    store = TaskStateStore()
    with pytest.raises(AirflowFailException, match="PREEMPTIBLE-CPUS-per-project-region"):
        run_try(make_operator(server, prefix), store, 1)
    attempt = store.get(LEDGER_KEY)["attempts"][0]
    assert attempt["outcome"] == "failed" and "us-central1" in attempt["reason"]


def test_permission_error_fails_the_task_naming_the_permission(server, prefix):
    server.fake.denied_permission = "compute.instances.create"
    with pytest.raises(AirflowFailException, match=r"compute\.instances\.create.*roles/compute\.instanceAdmin\.v1"):
        run_try(make_operator(server, prefix), TaskStateStore(), 1)


def test_invalid_arguments_fail_at_parse_time():
    from airflow_spot_training.operators.spot_training import SpotTrainingConfigError

    with pytest.raises(SpotTrainingConfigError, match="train: .*zones"):
        ComputeEngineSpotTrainingOperator(task_id="train", zones=["nowhere"], machine_type="n1-standard-4",
                                          command="true")
