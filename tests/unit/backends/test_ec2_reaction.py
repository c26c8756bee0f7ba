"""Reacting to an ended EC2 attempt: nothing between the shared DescribeInstances and the event.

* The triggerer's ``poll`` leaves the result record and the spot request to the worker
  (``AttemptStatus.to_settle``); ``EC2SpotBackend.settle`` reads them in
  ``execute_complete`` before the attempt is recorded.
* The trigger does not sleep its ``poll_interval`` between polls of a backend whose
  ``poll`` waits for the next shared call: it hears of the end when that call returns.
* The calls of one tick (one per 1,000 instances) are in flight together.

Against moto on loopback through the real operator and trigger, except the last, which
counts calls at the EC2 client (the cloud boundary).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_spot_training.backends.ec2 import EC2Handle, EC2SpotBackend
from airflow_spot_training.backends.ec2_batching import MAX_CONCURRENT_CALLS, MAX_IDS_PER_CALL, DescribeCoordinator
from airflow_spot_training.core.attempt import AttemptEvent, AttemptState, AttemptStatus, EventKind
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests import aws_cloud
from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger
from tests.spot_harness import JsonFileStateStore, first_event, run_try


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


def test_the_trigger_hears_of_a_reclaim_at_the_next_shared_call_not_after_its_poll_interval(aws, network):
    """poll_interval one hour, shared calls every 50 ms: the reclaim still arrives (the wait has a 60 s guard)."""
    handle = launched(network, f"s3://{aws_cloud.BUCKET}/runs/repoll")
    classpath, kwargs = backend_for(network).serialize()
    trigger = SpotTrainingTrigger(backend_classpath=classpath, backend_kwargs=kwargs, handle=handle.to_dict(),
                                  attempt=1, checkpoint_prefix=f"s3://{aws_cloud.BUCKET}/runs/repoll",
                                  poll_interval=3600, progress_log_interval=3600, version=2)
    assert trigger.backend.poll_waits_for_next_status

    async def main() -> dict[str, Any]:
        watching = asyncio.ensure_future(first_event(trigger, timeout=60))
        await asyncio.sleep(0.3)  # the trigger polls the running instance, then sleeps or waits
        assert not watching.done()
        aws_cloud.reclaim_instance(handle.instance_id)
        return await watching

    event = asyncio.run(main())
    assert event["kind"] == "preempted" and event["to_settle"] == "result"


class CountingEC2Client:
    """DescribeInstances at the EC2 client boundary: every id is running; counts calls in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.calls = 0

    async def describe_instances(self, InstanceIds: list[str]) -> dict[str, Any]:  # noqa: N803
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(3):  # a response takes a while: let the other calls of the tick start
            await asyncio.sleep(0)
        self.in_flight -= 1
        return {"Reservations": [{"Instances": [{"InstanceId": i, "State": {"Name": "running"}}
                                                for i in InstanceIds]}]}

    async def __aenter__(self) -> CountingEC2Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


@pytest.mark.parametrize("n", [2500, 6000])
def test_the_calls_of_one_tick_are_in_flight_together_up_to_the_limit(n):
    client = CountingEC2Client()
    ids = [f"i-{k:017x}" for k in range(n)]

    async def make() -> CountingEC2Client:
        return client

    async def main() -> list[Any]:
        coordinator = DescribeCoordinator(("k",), make, interval=60.0)  # one tick before main returns
        return await asyncio.gather(*(coordinator.describe(i, caller=i) for i in ids))

    results = asyncio.run(main())
    chunks = -(-n // MAX_IDS_PER_CALL)
    assert all(r["State"]["Name"] == "running" for r in results)
    assert client.calls == chunks
    assert client.most_in_flight == min(chunks, MAX_CONCURRENT_CALLS)
