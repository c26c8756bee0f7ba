"""SageMaker gangs on moto: InstanceCount=num_nodes, ranks from the job's resource config, node-seconds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_spot_training.backends.base import LaunchRequest
from airflow_spot_training.core import contract as spot_contract
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError
from airflow_spot_training.runtime import read_contract
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, run_try
from tests.unit.backends.test_sagemaker_scenarios import PRICE, operator


@pytest.fixture
def cloud(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> aws_cloud.SageMakerCloud:
    return aws_cloud.SageMakerCloud(monkeypatch)


class TestSageMakerGang:
    def test_a_gang_is_one_job_of_num_nodes_instances_billed_per_node(self, aws, cloud, tmp_path):
        store = JsonFileStateStore(tmp_path / "state.json")
        machine = aws_cloud.SageMakerMachine(cloud, aws["storage_options"], ["complete"])
        summary, _ = run_try(operator(num_nodes=4), store, 1, machine)

        assert summary["outcome"] == "succeeded"
        job = cloud.jobs()[f"spot-training-{summary['run_key']}-a1"]
        assert job.resource_config["InstanceCount"] == 4
        attempt = summary["attempts"][0]
        assert attempt["nodes"] == 4 and attempt["pool"] == "ml.g5.xlargex4"
        # SageMaker reports billable seconds per instance: the ledger bills them on every node
        assert attempt["cost"] == pytest.approx(4 * 300 / 3600 * PRICE, rel=1e-4)

    def test_every_host_is_told_the_gang_and_checkpoints_to_the_prefix_itself(self):
        contract = spot_contract.Contract("s3://b/runs/sm", 1, "spot", 0, "k" * 20, num_nodes=4)
        request = LaunchRequest(contract, Capacity.SPOT, "k" * 20 + "-a1")
        env = operator(num_nodes=4).backend.create_params(request)["Environment"]
        assert env["SPOT_TRAINING_NUM_NODES"] == "4" and "SPOT_TRAINING_NODE_RANK" not in env  # SageMaker places
        assert env["SPOT_TRAINING_CHECKPOINT_URI"] == "s3://b/runs/sm"  # the ranks' shards meet on S3

    def test_the_instance_count_is_given_once(self):
        with pytest.raises(SpotTrainingConfigError, match="instance_count=2 and the operator's num_nodes=2 both set"):
            operator(num_nodes=2, instance_count=2)


class TestPlatformPlacement:
    def test_sagemaker_hosts_give_the_rank_and_rank_0(self):
        config = {"current_host": "algo-3", "hosts": ["algo-2", "algo-1", "algo-3"]}
        assert spot_contract.platform_node({}, config) == (2, "algo-1", 29500)

    def test_vertex_cluster_spec_gives_the_rank_and_rank_0(self):
        spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                            "workerpool1": ["w-0:2222", "w-1:2222"]},
                "task": {"type": "workerpool1", "index": 1}}
        assert spot_contract.platform_node({"CLUSTER_SPEC": json.dumps(spec)}) == (
            2, "cmle-training-workerpool0-ab-0", 2222)

    @staticmethod
    def _gang_environment(monkeypatch, nodes):
        for name in spot_contract.GANG + ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                          "CLUSTER_SPEC"):
            monkeypatch.setenv(name, "")  # restored (removed) after the test, whatever read_contract exports
            monkeypatch.delenv(name)
        for name, value in spot_contract.Contract("s3://b/p", 1, "spot", 0, "k", num_nodes=nodes).to_env().items():
            monkeypatch.setenv(name, value)

    def test_read_contract_places_the_node_and_exports_the_torch_variables(self, monkeypatch):
        self._gang_environment(monkeypatch, 3)
        spec = {"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w-0:2222", "w-1:2222"]},
                "task": {"type": "workerpool1", "index": 0}}
        monkeypatch.setenv("CLUSTER_SPEC", json.dumps(spec))
        contract = read_contract()
        assert (contract.node_rank, contract.num_nodes, contract.master_addr) == (1, 3, "chief")
        import os

        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("1", "3", "chief")
        assert os.environ["SPOT_TRAINING_NODE_RANK"] == "1"

    def test_a_gang_with_no_placement_is_refused_naming_what_is_missing(self, monkeypatch):
        self._gang_environment(monkeypatch, 2)
        with pytest.raises(RuntimeError, match="gang of 2 nodes.*SPOT_TRAINING_NODE_RANK"):
            read_contract()
