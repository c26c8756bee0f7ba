"""VertexAISpotTrainingOperator end to end: real operator + trigger + aiplatform gRPC clients
(sync in the worker, asyncio in the trigger), a fake JobService on loopback, and the test
playing the training container."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_spot_training.operators.spot_training import LEDGER_KEY, SpotTrainingConfigError
from airflow_spot_training.operators.vertex_ai import VertexAISpotTrainingOperator
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests.e2e.operator_harness import TaskStateStore, rebuild_trigger, run_try
from tests.fakes.vertex_server import VertexServer

TOTAL = 300


@pytest.fixture
def server():
    with VertexServer() as s:
        yield s


def make_operator(server: VertexServer, **kwargs) -> VertexAISpotTrainingOperator:
    return VertexAISpotTrainingOperator(
        task_id="train", region="us-central1", machine_type="n1-standard-8",
        image_uri="us-docker.pkg.dev/p/train/t:1", project_id="test-project", poll_interval=0.05,
        emulator_host=server.endpoint, **kwargs,
    )


class Container:
    """Plays the training container of the last created job: reads AIP_CHECKPOINT_DIR as Vertex sets it."""

    def __init__(self, server: VertexServer) -> None:
        self.server = server

    def job(self):
        return self.server.fake.calls("CreateCustomJob")[-1].custom_job

    def name(self) -> str:
        return self.server.fake.by_display_name(self.job().display_name).name

    def aip_checkpoint_dir(self) -> str:
        return self.job().job_spec.base_output_directory.output_uri_prefix + "/checkpoints/"

    def train(self, until: int) -> int | None:
        self.server.fake.start(self.name())
        manager = CheckpointManager(self.aip_checkpoint_dir(), keep_last=None)
        latest = manager.latest()
        start = latest.step if latest else None
        for step in range((start or 0) + 50, until + 1, 50):
            manager.save(step, {"model.pt": b"w"}, total_steps=TOTAL)
        return start


def test_preempted_then_escalated_then_success_with_resume(server, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI", f"file://{tmp_path / 'base'}")
    box = Container(server)
    resumed_from: list[int | None] = []

    def cloud(deferred):
        if deferred.trigger.attempt == 1:
            resumed_from.append(box.train(until=150))
            server.fake.preempt(box.name())
        else:
            resumed_from.append(box.train(until=TOTAL))
            server.fake.succeed(box.name())

    outcome = run_try(make_operator(server, max_preemptions=1), TaskStateStore(), 1, on_defer=cloud)
    summary = outcome.result

    expected_prefix = f"file://{tmp_path / 'base' / 'gcp_dag' / 'manual__2026-01-01T00%3A00%3A00+00%3A00' / 'train' / 'checkpoints'}"
    assert summary["checkpoint_prefix"] == expected_prefix
    assert summary["outcome"] == "succeeded" and summary["preemptions"] == 1
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "preempted"), ("on_demand", "succeeded")]
    assert summary["attempts"][1]["start_step"] == 150
    assert resumed_from == [None, 150]
    jobs = server.fake.calls("CreateCustomJob")
    assert [j.custom_job.job_spec.scheduling.strategy.name for j in jobs] == ["SPOT", "STANDARD"]
    assert {j.custom_job.job_spec.base_output_directory.output_uri_prefix + "/checkpoints" for j in jobs} == {
        expected_prefix}
    assert [j.custom_job.display_name[-3:] for j in jobs] == ["-a1", "-a2"]
    assert outcome.ti.xcom["spot_training_attempt_1_vertex_ai_job"].startswith(
        "https://console.cloud.google.com/vertex-ai/locations/us-central1/training/")


def test_stuck_spot_job_is_cancelled_and_a_standard_job_resumes(server, tmp_path):
    """No spot capacity: the pending spot job is cancelled; the policy escalates to STANDARD."""
    prefix = f"file://{tmp_path / 'run' / 'checkpoints'}"
    box = Container(server)

    def cloud(deferred):
        if deferred.trigger.attempt == 2:
            box.train(until=TOTAL)
            server.fake.succeed(box.name())

    op = make_operator(server, checkpoint_prefix=prefix, max_spot_wait=0,
                       max_pending_seconds=0.001)
    summary = run_try(op, TaskStateStore(), 1, on_defer=cloud).result
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "capacity_unavailable"), ("on_demand", "succeeded")]
    first_job = server.fake.by_display_name(server.fake.calls("CreateCustomJob")[0].custom_job.display_name)
    assert first_job.state.name == "JOB_STATE_CANCELLED"
    assert [c.name for c in server.fake.calls("CancelCustomJob")] == [first_job.name]


def test_retry_after_a_worker_crash_reattaches_without_a_second_job(server, tmp_path):
    prefix = f"file://{tmp_path / 'run' / 'checkpoints'}"
    store = TaskStateStore()
    first = run_try(make_operator(server, checkpoint_prefix=prefix), store, 1, stop_after_deferrals=1)
    ledger = store.get(LEDGER_KEY)  # died inside launch: the job exists, its handle was never saved
    ledger["attempts"][-1].update(handle=None, outcome="launching")
    store.set(LEDGER_KEY, ledger)

    box = Container(server)
    second = run_try(make_operator(server, checkpoint_prefix=prefix), store, 2,
                     on_defer=lambda d: (box.train(until=TOTAL), server.fake.succeed(box.name())))
    assert second.result["outcome"] == "succeeded" and second.result["tries"] == [1, 2]
    assert len(server.fake.calls("CreateCustomJob")) == 1
    assert second.deferrals[0].trigger.handle["name"] == first.deferrals[0].trigger.handle["name"]


def test_task_killed_while_deferred_cancels_the_job(server, tmp_path):
    outcome = run_try(make_operator(server, checkpoint_prefix=f"file://{tmp_path / 'checkpoints'}"), TaskStateStore(), 1,
                      stop_after_deferrals=1)
    handle = outcome.deferrals[0].trigger.handle
    asyncio.run(rebuild_trigger(outcome.deferrals[0].trigger).on_kill())
    assert server.fake.jobs[handle["name"]].state.name == "JOB_STATE_CANCELLED"


def test_permission_error_fails_the_task_naming_the_permission(server, tmp_path):
    import grpc

    server.fake.create_error = (grpc.StatusCode.PERMISSION_DENIED,
                                "Permission 'aiplatform.customJobs.create' denied on resource "
                                "'//aiplatform.googleapis.com/projects/test-project/locations/us-central1'")
    with pytest.raises(AirflowFailException, match=r"aiplatform\.customJobs\.create.*roles/aiplatform\.user"):
        run_try(make_operator(server, checkpoint_prefix=f"file://{tmp_path / 'checkpoints'}"), TaskStateStore(), 1)


def test_quota_error_fails_the_task_naming_the_quota(server, tmp_path):
    import grpc

    server.fake.create_error = (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "The following quota metrics exceed quota limits: "
                                "aiplatform.googleapis.com/custom_model_training_cpus")
    with pytest.raises(AirflowFailException, match="aiplatform.googleapis.com/custom_model_training_cpus"):
        run_try(make_operator(server, checkpoint_prefix=f"file://{tmp_path / 'checkpoints'}"), TaskStateStore(), 1)


def test_a_checkpoint_prefix_not_ending_in_checkpoints_fails_at_parse_time(server):
    with pytest.raises(SpotTrainingConfigError, match="train: .*must end in '/checkpoints'"):
        make_operator(server, checkpoint_prefix="gs://bucket/runs/x")
