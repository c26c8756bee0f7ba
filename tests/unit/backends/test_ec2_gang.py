"""EC2 gangs on moto: all-or-nothing launches, rank tags and user data, one reclaimed node ends the gang."""

from __future__ import annotations

import json
from typing import Any

import fsspec
import pytest

from airflow_spot_training.backends.ec2 import EC2Handle, combine_gang
from airflow_spot_training.core.attempt import AttemptState, AttemptStatus
from airflow_spot_training.core.contract import node_result_uri
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.operators.spot_training import LEDGER_KEY
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, run_try
from tests.unit.backends.test_ec2_scenarios import instances_of, operator


@pytest.fixture
def network(aws: dict[str, Any]) -> dict[str, Any]:
    return aws_cloud.make_network()


class GangMachine:
    """Plays every node of each attempt: each rank commits its shards, then the attempt ends as scripted.

    :param endings: attempt -> ``"finish"`` or ``("reclaim", rank)`` (that node's instance is reclaimed).
    """

    def __init__(self, storage_options: dict[str, Any], endings: dict[int, Any], total_steps: int = 60) -> None:
        self.storage_options, self.endings, self.total_steps = storage_options, endings, total_steps
        self.handles: list[EC2Handle] = []
        self.resumed_from: dict[int, int] = {}

    def __call__(self, handle: EC2Handle) -> None:
        self.handles.append(handle)
        attempt, nodes = int(handle.attempt), handle.instance_ids
        prefix = aws_cloud.checkpoint_prefix_of(handle)
        ranks = [CheckpointManager(prefix, keep_last=None, storage_options=self.storage_options, rank=rank,
                                   num_shards=len(nodes), token=handle.token, attempt=attempt)
                 for rank in range(len(nodes))]
        latest = ranks[0].latest()
        start = latest.step if latest else 0
        self.resumed_from.setdefault(attempt, start)
        ending = self.endings.get(attempt, "finish")
        end = self.total_steps if ending == "finish" else start + 20
        for step in range(start + 20, end + 1, 20):
            for manager in ranks:
                manager.save(step, {"model.bin": f"rank {manager.rank} at {step}".encode()},
                             total_steps=self.total_steps)
        if ending != "finish":
            aws_cloud.reclaim_instance(nodes[ending[1]])  # the others keep running: the operator stops them
            return
        for rank, instance_id in enumerate(nodes):  # each node's bootstrap writes its own result record
            record = {"exit_code": 0, "attempt": attempt, "token": handle.token}
            with fsspec.open(node_result_uri(handle.result_uri, rank), "w", **self.storage_options) as f:
                f.write(json.dumps(record))
            aws_cloud.shut_down_instance(instance_id)


def _user_data(instance: Any) -> str:
    from tests.conformance.clouds import _user_data_text

    return _user_data_text(instance.user_data)


class TestEC2Gang:
    def test_a_gang_is_launched_with_ranks_and_rank_0s_address(self, aws, network, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = GangMachine(aws["storage_options"], {1: "finish"})
        summary, _ = run_try(operator(network, num_nodes=3), store, 1, machine)

        assert summary["outcome"] == "succeeded" and summary["attempts"][0]["nodes"] == 3
        instances = sorted(instances_of(summary["run_key"]),
                           key=lambda i: aws_cloud.instance_tags(i)["spot-training:node-rank"])
        assert len(instances) == 3 and all(i.state == "terminated" for i in instances)
        tags = [aws_cloud.instance_tags(i) for i in instances]
        assert [t["spot-training:node-rank"] for t in tags] == ["0", "1", "2"]
        assert {t["spot-training:token"] for t in tags} == {f"{summary['run_key']}-a1"}  # one token per attempt
        rank0_address = instances[0].private_ip
        for rank, instance in enumerate(instances):
            script = _user_data(instance)
            assert f"export SPOT_TRAINING_NODE_RANK={rank}" in script and "export WORLD_SIZE=3" in script
            assert f"export MASTER_ADDR={rank0_address if rank else '127.0.0.1'}" in script
        final = CheckpointManager(summary["checkpoint_prefix"], storage_options=aws["storage_options"]).latest()
        assert final.step == 60 and final.record.num_shards == 3

    def test_a_partial_gang_is_released_and_the_launch_retried_in_the_next_pool(self, aws, network, tmp_path,
                                                                                monkeypatch):
        subnets = network["subnets"]
        plan = aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(
            spot_capacity={("c5.xlarge", subnets[0]): 1}))  # room for one node of two
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = GangMachine(aws["storage_options"], {1: "finish"})
        summary, _ = run_try(operator(network, num_nodes=2), store, 1, machine)

        assert summary["outcome"] == "succeeded" and summary["preemptions"] == 0
        assert summary["attempts"][0]["pool"] == f"c5.xlarge@{subnets[1]}"
        handle = store.get(LEDGER_KEY)["attempts"][0]["handle"]
        assert handle["pools_tried"] == [
            f"c5.xlarge@{subnets[0]}: InsufficientInstanceCapacity (node 1 of 2: the gang was released)"]
        instances = instances_of(summary["run_key"])
        assert not [i for i in instances if i.state != "terminated"]  # the partial gang left nothing running
        released = [i for i in instances if i.subnet_id == subnets[0]]
        assert len(released) == 1 and released[0].state_reason.code != "Server.SpotInstanceTermination"
        assert plan.calls["RunInstances"] == 4  # rank 0 and 1 in the first pool, then both in the next

    def test_no_pool_holds_the_gang_counts_as_no_capacity_and_is_retried(self, aws, network, tmp_path,
                                                                         monkeypatch):
        subnets = network["subnets"][:2]
        aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(
            spot_capacity={(t, s): 1 for t in ("c5.xlarge", "m5.xlarge") for s in subnets}))
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = GangMachine(aws["storage_options"], {})
        summary, _ = run_try(operator(network, num_nodes=2, max_spot_wait=0), store, 1, machine)

        outcomes = [(a["capacity"], a["outcome"]) for a in summary["attempts"]]
        assert outcomes == [("spot", "capacity_unavailable"), ("on_demand", "succeeded")]
        assert not [i for i in instances_of(summary["run_key"]) if i.state != "terminated"]

    def test_one_node_reclaimed_stops_the_gang_as_one_preemption(self, aws, network, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = GangMachine(aws["storage_options"], {1: ("reclaim", 1), 2: "finish"})
        summary, _ = run_try(operator(network, num_nodes=2), store, 1, machine)

        assert [(a["outcome"], a["preemptions"]) for a in summary["attempts"]] == [("preempted", 1),
                                                                                  ("succeeded", 0)]
        assert summary["preemptions"] == 1
        assert "node 1 of 2: Server.SpotInstanceTermination" in summary["attempts"][0]["reason"]
        assert machine.resumed_from == {1: 0, 2: 20}  # the newest step both ranks committed
        first = [i for i in instances_of(summary["run_key"])
                 if aws_cloud.instance_tags(i)["spot-training:attempt"] == "1"]
        assert len(first) == 2 and all(i.state == "terminated" for i in first)  # the survivor was stopped


    def test_the_next_gang_leaves_the_pool_that_reclaimed_a_node(self, aws, network, tmp_path):
        subnets = network["subnets"][:2]
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = GangMachine(aws["storage_options"], {1: ("reclaim", 0), 2: "finish"})
        summary, _ = run_try(operator(network, num_nodes=2, pool_cooldown=1800), store, 1, machine)

        assert [(a["outcome"], a["pool"]) for a in summary["attempts"]] == [
            ("preempted", f"c5.xlarge@{subnets[0]}"), ("succeeded", f"c5.xlarge@{subnets[1]}")]
        second = store.get(LEDGER_KEY)["attempts"][1]
        assert second["pool_order"][-1] == f"c5.xlarge@{subnets[0]}"
        assert f"c5.xlarge@{subnets[0]}: reclaimed an attempt" in second["pool_reason"]
        gang_2 = [(i.instance_type, i.subnet_id) for i in instances_of(summary["run_key"])
                  if aws_cloud.instance_tags(i)["spot-training:attempt"] == "2"]
        assert gang_2 == [("c5.xlarge", subnets[1])] * 2  # both nodes of the gang in the healthy pool

class TestCombineGang:
    @staticmethod
    def _status(state, **kw):
        return AttemptStatus(state=state, reason=str(state), **kw)

    def test_one_node_ending_decides(self):
        running, done = self._status(AttemptState.RUNNING), self._status(AttemptState.SUCCEEDED)
        assert combine_gang([running, done]).state is AttemptState.RUNNING
        assert combine_gang([done, done]).state is AttemptState.SUCCEEDED
        preempted = combine_gang([running, self._status(AttemptState.PREEMPTED, preemptions=1),
                                  self._status(AttemptState.FAILED)])
        assert (preempted.state, preempted.preemptions) == (AttemptState.PREEMPTED, 1)
        assert preempted.reason.startswith("node 1 of 3")
        failed = combine_gang([self._status(AttemptState.FAILED), running])
        assert (failed.state, failed.preemptions) == (AttemptState.FAILED, 0)


def test_a_worker_that_dies_launching_a_gang_leaves_no_duplicate(aws, tmp_path, monkeypatch):
    """The worker is killed inside RunInstances of rank 0; the retry completes that gang, launching rank 1 only."""
    import os
    import signal
    import subprocess
    import sys

    from moto.ec2.models.instances import InstanceBackend

    from tests.unit.backends.test_ec2_worker_crash import ROOT

    network = aws_cloud.make_network()
    args: dict[str, Any] = dict(
        task_id="train", command="python3 -m my_training", image_id=network["image_id"],
        instance_types=["c5.xlarge"], subnet_ids=network["subnets"][:2], on_demand_prices={"c5.xlarge": 0.17},
        checkpoint_prefix=f"s3://{aws_cloud.BUCKET}/runs/gang-crash", poll_interval=0.05, retries=1, num_nodes=2,
    )
    worker: dict[str, Any] = {}
    original_run = InstanceBackend.run_instances

    def run_instances_then_kill_worker(self: Any, *a: Any, **kw: Any) -> Any:
        reservation = original_run(self, *a, **kw)
        if "proc" in worker:
            os.kill(worker.pop("proc").pid, signal.SIGKILL)  # dies waiting for rank 0's answer
        return reservation

    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances_then_kill_worker)
    state_file = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tests.crashing_worker", str(state_file), json.dumps(args),
                             "kill-me"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker["proc"] = proc
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGKILL, 137), stderr.decode()[-2000:]
    assert len(aws_cloud.all_instances()) == 1  # rank 0 only: the gang was cut short
    rank0 = aws_cloud.all_instances()[0].id

    store = JsonFileStateStore(state_file)
    machine = GangMachine(aws["storage_options"], {1: "finish"})
    summary, _ = run_try(EC2SpotTrainingOperator(**args), store, 2, machine)

    assert summary["outcome"] == "succeeded" and [a["number"] for a in summary["attempts"]] == [1]
    instances = aws_cloud.all_instances()
    assert len(instances) == 2 and machine.handles[0].instance_ids[0] == rank0  # rank 0 kept, rank 1 added
    assert {aws_cloud.instance_tags(i)["spot-training:node-rank"] for i in instances} == {"0", "1"}
    assert all(i.state == "terminated" for i in instances)
