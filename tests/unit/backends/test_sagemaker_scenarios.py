"""SageMaker managed spot scenarios through the real operator, trigger and backend, against moto.

moto creates training jobs already ``Completed`` and has no ``StopTrainingJob``;
``tests.aws_cloud.SageMakerCloud`` makes new jobs start ``InProgress`` and adds
StopTrainingJob to moto. The test plays SageMaker's side at each wait: it commits
checkpoints to the job's ``CheckpointConfig.S3Uri`` in moto's S3 (what SageMaker
syncs from ``/opt/ml/checkpoints``), then appends an ``Interrupted`` entry to the
job's ``SecondaryStatusTransitions`` (a reclaim that SageMaker restarts in place),
completes the job with ``BillableTimeInSeconds`` / ``TrainingTimeInSeconds``, or
stops it with ``MaxWaitTimeExceeded``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_spot_training.operators.sagemaker import SageMakerSpotTrainingOperator
from airflow_spot_training.operators.spot_training import LEDGER_KEY
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, TryInstance, first_event, rebuild, run_try

PRICE = 1.408


@pytest.fixture
def cloud(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> aws_cloud.SageMakerCloud:
    return aws_cloud.SageMakerCloud(monkeypatch)


def operator(**kwargs: Any) -> SageMakerSpotTrainingOperator:
    args: dict[str, Any] = dict(
        task_id="train",
        image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest",
        role_arn="arn:aws:iam::123456789012:role/SageMakerTraining",
        instance_type="ml.g5.xlarge",
        max_runtime=3600,
        max_wait=7200,
        on_demand_price_per_hour=PRICE,
        checkpoint_prefix=f"s3://{aws_cloud.BUCKET}/runs/sm",
        max_preemptions=2,
        poll_interval=0.05,
    )
    args.update(kwargs)
    return SageMakerSpotTrainingOperator(**args)


class TestSageMakerScenarios:
    def test_success_records_billable_against_training_seconds(self, aws, cloud, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.SageMakerMachine(cloud, aws["storage_options"], ["complete"])
        summary, _ = run_try(operator(), store, 1, machine)

        assert summary["outcome"] == "succeeded" and summary["preemptions"] == 0
        attempt = summary["attempts"][0]
        assert attempt["billable_seconds"] == 300 and attempt["training_seconds"] == 1000
        assert attempt["cost"] == pytest.approx(300 / 3600 * PRICE, rel=1e-4)
        assert attempt["saved"] == pytest.approx(700 / 3600 * PRICE, rel=1e-4)
        assert summary["savings"]["saved_fraction"] == pytest.approx(0.7, rel=1e-4)
        jobs = cloud.jobs()
        assert list(jobs) == [f"spot-training-{summary['run_key']}-a1"]
        job = jobs[f"spot-training-{summary['run_key']}-a1"]
        assert job.enable_managed_spot_training is True
        assert job.checkpoint_config["S3Uri"] == f"s3://{aws_cloud.BUCKET}/runs/sm"
        assert job.stopping_condition == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}

    def test_interrupted_twice_escalates_to_an_on_demand_job_on_the_same_checkpoints(self, aws, cloud, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.SageMakerMachine(cloud, aws["storage_options"], ["interrupt", "interrupt", "complete"])
        summary, _ = run_try(operator(), store, 1, machine)

        assert summary["outcome"] == "succeeded"
        assert [(a["capacity"], a["outcome"], a["preemptions"]) for a in summary["attempts"]] == [
            ("spot", "preempted", 2), ("on_demand", "succeeded", 0)]
        assert summary["preemptions"] == 2 and [e["to"] for e in summary["escalations"]] == ["on_demand"]
        spot_name, od_name = (f"spot-training-{summary['run_key']}-a{n}" for n in (1, 2))
        # SageMaker restarted the spot job in place twice; the on-demand job resumed from step 80
        assert machine.resumed_from == [(spot_name, 0), (spot_name, 40), (od_name, 80)]
        assert [a["start_step"] for a in summary["attempts"]] == [None, 80]
        jobs = cloud.jobs()
        assert sorted(jobs) == [spot_name, od_name]
        assert jobs[spot_name].training_job_status == "Stopped"
        assert jobs[od_name].training_job_status == "Completed"
        assert jobs[od_name].enable_managed_spot_training is False
        assert "MaxWaitTimeInSeconds" not in jobs[od_name].stopping_condition
        assert jobs[od_name].checkpoint_config["S3Uri"] == jobs[spot_name].checkpoint_config["S3Uri"]

    def test_retry_reattaches_to_the_same_job(self, aws, cloud, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        with pytest.raises(TaskDeferred):  # try 1 launches and defers; its worker then dies
            operator().execute({"ti": TryInstance(1), "task_state_store": store})
        machine = aws_cloud.SageMakerMachine(cloud, aws["storage_options"], ["complete"])
        summary, _ = run_try(operator(), store, 2, machine)

        assert summary["outcome"] == "succeeded" and summary["tries"] == [1, 2]
        assert [a["number"] for a in summary["attempts"]] == [1]
        assert list(cloud.jobs()) == [f"spot-training-{summary['run_key']}-a1"]  # no renamed duplicate

    def test_max_wait_exceeded_is_spot_unavailable(self, aws, cloud, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.SageMakerMachine(cloud, aws["storage_options"], ["max-wait", "complete"])
        summary, _ = run_try(operator(max_spot_wait=0), store, 1, machine)

        assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
            ("spot", "capacity_unavailable"), ("on_demand", "succeeded")]
        assert "MaxWaitTimeExceeded" in summary["attempts"][0]["reason"]

    def test_quota_error_fails_naming_the_quota(self, aws, cloud, tmp_path, monkeypatch):
        aws_cloud.install_sagemaker_quota_error(monkeypatch)
        store = JsonFileStateStore(tmp_path / "state.json")
        with pytest.raises(AirflowFailException, match="'ml.g5.xlarge for spot training job usage'"):
            run_try(operator(), store, 1)
        assert [a["outcome"] for a in store.get(LEDGER_KEY)["attempts"]] == ["failed"]
        assert cloud.jobs() == {}

    def test_task_killed_while_deferred_stops_the_job(self, aws, cloud, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        with pytest.raises(TaskDeferred) as deferred:
            operator().execute({"ti": TryInstance(1), "task_state_store": store})
        trigger = rebuild(deferred.value.trigger)

        async def run_then_kill() -> None:
            waiting = asyncio.ensure_future(first_event(trigger))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            waiting.cancel()
            await trigger.on_kill()

        asyncio.run(run_then_kill())
        assert cloud.job(trigger.handle["job_name"]).training_job_status == "Stopped"
