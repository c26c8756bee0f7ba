"""An ended EC2 attempt: the trigger fires on what DescribeInstances shows, the worker settles it.

The triggerer's ``poll`` leaves the result record and the spot request to the worker
(``AttemptStatus.to_settle``); ``EC2SpotBackend.settle`` reads them in ``execute_complete``
before the attempt is recorded. Against moto on loopback, through the real operator and
trigger.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_spot_training.backends.ec2 import EC2Handle, EC2SpotBackend
from airflow_spot_training.core.attempt import AttemptEvent, AttemptState, AttemptStatus, EventKind
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, run_try


@pytest.fixture
def network(aws: dict[str, Any]) -> dict[str, Any]:
    return aws_cloud.make_network()


def launched(network: dict[str, Any], prefix: str) -> EC2Handle:
    import boto3

    ec2 = boto3.client("ec2", region_name=aws_cloud.REGION)
    instance = ec2.run_instances(ImageId=network["image_id"], MinCount=1, MaxCount=1,
                                 InstanceType="c5.large")["Instances"][0]
    return EC2Handle(backend="ec2", token="run-a1", attempt=1, capacity="spot", instance_id=instance["InstanceId"],
                     launched_at=0.0, result_uri=f"{prefix}/_results/attempt-1.json")


def backend_for(network: dict[str, Any]) -> EC2SpotBackend:
    return EC2SpotBackend("true", image_id=network["image_id"], instance_types=["c5.large"], describe_interval=0.05)


class TestPollLeavesTheResultToTheWorker:
    def test_a_shut_down_instance_is_final_at_once_and_settled_from_its_result_record(self, aws, network):
        prefix = f"s3://{aws_cloud.BUCKET}/runs/settle"
        handle = launched(network, prefix)
        CheckpointManager(prefix, storage_options=aws["storage_options"]).write_result(
            1, {"exit_code": 0, "attempt": 1, "token": "run-a1"})
        aws_cloud.shut_down_instance(handle.instance_id)
        backend = backend_for(network)

        polled = asyncio.run(backend.poll(handle))
        assert polled.is_final and polled.to_settle == "result"
        assert "exit_code" not in polled.details  # the record was not read in the triggerer

        settled = backend.settle(handle, polled)
        assert settled.state is AttemptState.SUCCEEDED and settled.to_settle is None
        assert settled.details["exit_code"] == 0
        described = backend.describe(handle)  # the worker's own read is settled in one call
        assert described.state is AttemptState.SUCCEEDED and described.to_settle is None

    def test_a_running_instance_has_nothing_to_settle(self, aws, network):
        handle = launched(network, f"s3://{aws_cloud.BUCKET}/runs/running")
        polled = asyncio.run(backend_for(network).poll(handle))
        assert polled.state is AttemptState.RUNNING and polled.to_settle is None


class TestTheEventCarriesWhatIsLeft:
    def test_to_settle_survives_the_payload_and_rebuilds_the_status(self):
        status = AttemptStatus(state=AttemptState.PREEMPTED, reason="reclaimed", preemptions=1,
                               details={"state_reason": "Server.SpotInstanceTermination"}, to_settle="result")
        handle = EC2Handle(backend="ec2", token="t-a1", attempt=1, capacity="spot", instance_id="i-1")
        event = AttemptEvent.from_payload(AttemptEvent.from_status(status, handle).to_payload())
        assert event.kind is EventKind.PREEMPTED and event.to_settle == "result"
        assert event.status() == status

    def test_an_event_that_does_not_end_the_attempt_has_no_final_status(self):
        event = AttemptEvent(kind=EventKind.INTERRUPTED, attempt=1)
        with pytest.raises(ValueError, match="does not end the attempt"):
            event.status()

    def test_a_version_2_event_loads_as_settled(self):
        event = AttemptEvent.from_payload({"kind": "failed", "attempt": 1, "version": 2})
        assert event.to_settle is None


def test_a_training_that_exited_0_before_its_reclaim_succeeds_through_the_operator(aws, network, tmp_path):
    """The trigger sees a reclaim (provisional: preempted); the worker reads exit 0: one attempt, succeeded."""
    events: list[dict[str, Any]] = []

    def machine(handle: Any) -> None:
        prefix = aws_cloud.checkpoint_prefix_of(handle)
        CheckpointManager(prefix, storage_options=aws["storage_options"]).write_result(
            handle.attempt, {"exit_code": 0, "attempt": handle.attempt, "token": handle.token})
        aws_cloud.reclaim_instance(handle.instance_id)

    operator = EC2SpotTrainingOperator(
        task_id="train", command="python3 -m my_training", image_id=network["image_id"],
        instance_types=["c5.xlarge"], subnet_ids=network["subnets"][:1],
        checkpoint_prefix=f"s3://{aws_cloud.BUCKET}/runs/exit-0-then-reclaimed", poll_interval=0.05)
    complete = operator.execute_complete

    def recording(context: Any, event: Any = None) -> Any:
        events.append(event)
        return complete(context, event)

    operator.execute_complete = recording  # type: ignore[method-assign]
    summary, _ = run_try(operator, JsonFileStateStore(tmp_path / "state.json"), 1, machine)

    assert [(e["kind"], e["to_settle"]) for e in events] == [("preempted", "result")]
    assert summary["outcome"] == "succeeded" and summary["preemptions"] == 0
    assert [a["outcome"] for a in summary["attempts"]] == ["succeeded"]
