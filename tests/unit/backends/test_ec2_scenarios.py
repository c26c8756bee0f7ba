"""EC2 scenarios through the real operator, trigger and backend, against moto on loopback.

Every scenario runs ``EC2SpotTrainingOperator.execute`` -> ``TaskDeferred`` ->
``SpotTrainingTrigger.run()`` (rebuilt from ``serialize()``) -> ``execute_complete``
with real boto3 / aiobotocore / s3fs clients reaching a ``ThreadedMotoServer`` on a
random 127.0.0.1 port through the ``aws_default`` connection. The test plays the
instance and the spot market at the cloud boundary (see ``tests/aws_cloud.py``):
it commits checkpoints and the result record to moto's S3, and sets moto's instance
state and state reason for a reclaim (``Server.SpotInstanceTermination``) or the
bootstrap's own shutdown (``Client.InstanceInitiatedShutdown``). Each scenario
asserts on the ledger and on what exists in the moto account afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.operators.spot_training import LEDGER_KEY
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, TryInstance, first_event, rebuild, run_try

PRICES = {"c5.xlarge": 0.17, "m5.xlarge": 0.192}


@pytest.fixture
def network(aws: dict[str, Any]) -> dict[str, Any]:
    return aws_cloud.make_network()


def operator(network: dict[str, Any], **kwargs: Any) -> EC2SpotTrainingOperator:
    args: dict[str, Any] = dict(
        task_id="train",
        command="python3 -m my_training",
        image_id=network["image_id"],
        instance_types=["c5.xlarge", "m5.xlarge"],
        subnet_ids=network["subnets"][:2],
        on_demand_prices=PRICES,
        checkpoint_prefix=f"s3://{aws_cloud.BUCKET}/runs/scenario",
        max_preemptions=2,
        poll_interval=0.05,
        progress_log_interval=5,
    )
    args.update(kwargs)
    return EC2SpotTrainingOperator(**args)


def instances_of(run_key: str) -> list[Any]:
    return [i for i in aws_cloud.all_instances()
            if aws_cloud.instance_tags(i).get("spot-training:run-key") == run_key]


class TestEC2Scenarios:
    def test_success_on_first_attempt(self, aws, network, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "finish"})
        summary, _ = run_try(operator(network), store, 1, machine)

        assert summary["outcome"] == "succeeded"
        assert [a["capacity"] for a in summary["attempts"]] == ["spot"]
        assert summary["preemptions"] == 0 and summary["final_checkpoint_step"] == 120
        attempt = summary["attempts"][0]
        assert attempt["pool"] == f"c5.xlarge@{network['subnets'][0]}"
        assert attempt["cost"] is not None and attempt["saved"] > 0  # spot price (moto's) < the table's
        instances = instances_of(summary["run_key"])
        assert len(instances) == 1
        only = instances[0]
        assert only.state == "terminated" and only.lifecycle == "spot"
        tags = aws_cloud.instance_tags(only)
        assert tags["spot-training:attempt"] == "1" and tags["spot-training:dag-id"] == "spot_dag"
        assert tags["spot-training:token"] == f"{summary['run_key']}-a1"

    def test_preempted_twice_escalated_then_succeeds_resuming_each_time(self, aws, network, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "reclaim", 3: "finish"})
        summary, _ = run_try(operator(network), store, 1, machine)

        assert summary["outcome"] == "succeeded"
        assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
            ("spot", "preempted"), ("spot", "preempted"), ("on_demand", "succeeded")]
        assert summary["preemptions"] == 2
        assert [e["to"] for e in summary["escalations"]] == ["on_demand"]
        # each relaunch resumed from the newest committed checkpoint of the one before
        assert machine.resumed_from == {1: 0, 2: 40, 3: 80}
        assert [a["start_step"] for a in summary["attempts"]] == [None, 40, 80]
        assert summary["final_checkpoint_step"] == 120 and summary["recomputed_steps"] == 0
        ledger = store.get(LEDGER_KEY)
        assert [a["handle"]["capacity"] for a in ledger["attempts"]] == ["spot", "spot", "on_demand"]
        assert "Server.SpotInstanceTermination" in ledger["attempts"][0]["reason"]
        instances = instances_of(summary["run_key"])
        assert len(instances) == 3 and all(i.state == "terminated" for i in instances)
        by_attempt = {aws_cloud.instance_tags(i)["spot-training:attempt"]: i for i in instances}
        assert by_attempt["1"].lifecycle == "spot" and by_attempt["2"].lifecycle == "spot"
        assert by_attempt["3"].lifecycle != "spot"  # on-demand: no InstanceMarketOptions

    def test_no_capacity_in_first_pools_launches_in_a_later_one(self, aws, network, tmp_path, monkeypatch):
        subnets = network["subnets"]
        aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(
            no_capacity={("c5.xlarge", subnets[0]), ("c5.xlarge", subnets[1]), ("m5.xlarge", subnets[0])}))
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "finish"})
        summary, _ = run_try(operator(network), store, 1, machine)

        assert summary["outcome"] == "succeeded"
        assert [a["pool"] for a in summary["attempts"]] == [f"m5.xlarge@{subnets[1]}"]
        handle = store.get(LEDGER_KEY)["attempts"][0]["handle"]
        assert len(handle["pools_tried"]) == 3
        assert all("InsufficientInstanceCapacity" in p for p in handle["pools_tried"])
        instances = instances_of(summary["run_key"])
        assert [(i.instance_type, i.subnet_id) for i in instances] == [("m5.xlarge", subnets[1])]

    def test_no_spot_capacity_anywhere_escalates_to_on_demand(self, aws, network, tmp_path, monkeypatch):
        subnets = network["subnets"][:2]
        aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(
            no_capacity={(t, s) for t in PRICES for s in subnets}))
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.EC2Machine(aws["storage_options"], {2: "finish"})
        summary, _ = run_try(operator(network, max_spot_wait=0), store, 1, machine)

        assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
            ("spot", "capacity_unavailable"), ("on_demand", "succeeded")]
        assert "no spot capacity in any of 4 pool(s)" in summary["attempts"][0]["reason"]
        assert len(instances_of(summary["run_key"])) == 1

    def test_quota_error_fails_naming_the_quota(self, aws, network, tmp_path, monkeypatch):
        aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(quota_error="MaxSpotInstanceCountExceeded"))
        store = JsonFileStateStore(tmp_path / "state.json")
        with pytest.raises(AirflowFailException) as raised:
            run_try(operator(network), store, 1)
        message = str(raised.value)
        assert "MaxSpotInstanceCountExceeded" in message
        assert "Spot Instance Requests' (L-34B43A08)" in message and "Service Quotas" in message
        ledger = store.get(LEDGER_KEY)
        assert [a["outcome"] for a in ledger["attempts"]] == ["failed"]
        assert aws_cloud.all_instances() == []

    def test_throttling_is_retried_with_backoff_and_the_task_succeeds(self, aws, network, tmp_path, monkeypatch):
        plan = aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(throttle_run=2, throttle_describe=2,
                                                                           throttle_poll=2))
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "finish"})
        summary, _ = run_try(operator(network), store, 1, machine)

        assert summary["outcome"] == "succeeded" and len(summary["attempts"]) == 1
        assert plan.calls["RunInstances"] == 3  # two throttled answers, then the launch
        assert plan.calls["DescribeInstances"] > 2
        assert plan.calls["DescribeInstances(InstanceIds)"] > 2  # the trigger's polls were throttled, then served
        assert len(instances_of(summary["run_key"])) == 1

    def test_task_killed_while_deferred_terminates_the_instance(self, aws, network, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        op = operator(network)
        ti = TryInstance(1)
        with pytest.raises(TaskDeferred) as deferred:
            op.execute({"ti": ti, "task_state_store": store})
        trigger = rebuild(deferred.value.trigger)
        instance_id = trigger.handle["instance_id"]
        assert aws_cloud.moto_instance(instance_id).state == "running"

        async def run_then_kill() -> None:
            waiting = asyncio.ensure_future(first_event(trigger))
            await asyncio.sleep(0.3)  # the trigger is polling a running instance
            assert not waiting.done()
            waiting.cancel()
            await trigger.on_kill()

        asyncio.run(run_then_kill())
        instance = aws_cloud.moto_instance(instance_id)
        assert instance.state == "terminated"
        assert instance.state_reason.code == "Client.UserInitiatedShutdown"

    def test_blocking_mode_on_kill_terminates_the_instance(self, aws, network, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        op = operator(network, deferrable=False)
        op._live_handle = None
        ti = TryInstance(1)
        import threading

        result: dict[str, Any] = {}

        def run() -> None:
            try:
                op.execute({"ti": ti, "task_state_store": store})
            except Exception as e:  # the stopped attempt fails the try
                result["error"] = e

        worker = threading.Thread(target=run)
        worker.start()
        for _ in range(200):
            if getattr(op, "_live_handle", None):
                break
            threading.Event().wait(0.05)
        handle = op._live_handle
        assert handle is not None
        op.on_kill()
        worker.join(30)
        assert aws_cloud.moto_instance(handle.instance_id).state == "terminated"
        assert "stopped" in str(result.get("error", ""))
