"""Pool health on EC2, through the real operator, trigger and backend against moto on loopback: a
pool that reclaimed an attempt is tried last by the next launch, and the ledger says why."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_spot_training.operators.spot_training import LEDGER_KEY
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, run_try
from tests.unit.backends.test_ec2_scenarios import instances_of, operator


@pytest.fixture
def network(aws: dict[str, Any]) -> dict[str, Any]:
    return aws_cloud.make_network()


def test_the_pool_that_reclaimed_attempt_1_is_skipped_by_attempt_2(aws, network, tmp_path):
    subnets = network["subnets"][:2]
    store = JsonFileStateStore(tmp_path / "state.json")
    machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "finish"})
    summary, _ = run_try(operator(network, pool_cooldown=1800), store, 1, machine)

    assert summary["outcome"] == "succeeded"
    assert [(a["capacity"], a["outcome"], a["pool"]) for a in summary["attempts"]] == [
        ("spot", "preempted", f"c5.xlarge@{subnets[0]}"), ("spot", "succeeded", f"c5.xlarge@{subnets[1]}")]
    ledger = store.get(LEDGER_KEY)
    second = ledger["attempts"][1]
    assert second["pool_order"] == [f"c5.xlarge@{subnets[1]}", f"m5.xlarge@{subnets[0]}",
                                    f"m5.xlarge@{subnets[1]}", f"c5.xlarge@{subnets[0]}"]
    assert second["pool_reason"].startswith(f"c5.xlarge@{subnets[1]} first: no reclaim or capacity miss")
    assert f"c5.xlarge@{subnets[0]}: reclaimed an attempt" in second["pool_reason"]
    assert "cooling down for" in second["pool_reason"]
    assert summary["attempts"][1]["pool_reason"] == second["pool_reason"]
    # one RunInstances per attempt: the cooling pool was not even tried
    instances = instances_of(summary["run_key"])
    assert sorted((i.instance_type, i.subnet_id) for i in instances) == sorted(
        [("c5.xlarge", subnets[0]), ("c5.xlarge", subnets[1])])


def test_without_pool_health_the_ladder_restarts_from_its_first_pool(aws, network, tmp_path):
    subnets = network["subnets"][:2]
    store = JsonFileStateStore(tmp_path / "state.json")
    machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "finish"})
    summary, _ = run_try(operator(network, pool_cooldown=0), store, 1, machine)

    assert [a["pool"] for a in summary["attempts"]] == [f"c5.xlarge@{subnets[0]}"] * 2
    assert store.get(LEDGER_KEY)["attempts"][1]["pool_order"] is None


def test_a_pool_without_capacity_is_tried_last_by_the_next_attempt(aws, network, tmp_path, monkeypatch):
    subnets = network["subnets"][:2]
    aws_cloud.install_faults(monkeypatch, aws_cloud.FaultPlan(no_capacity={("c5.xlarge", subnets[0])}))
    store = JsonFileStateStore(tmp_path / "state.json")
    machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "finish"})
    summary, _ = run_try(operator(network), store, 1, machine)

    assert [a["pool"] for a in summary["attempts"]] == [f"c5.xlarge@{subnets[1]}", f"m5.xlarge@{subnets[0]}"]
    ledger = store.get(LEDGER_KEY)
    assert ledger["attempts"][0]["pools_without_capacity"] == [f"c5.xlarge@{subnets[0]}"]
    assert ledger["attempts"][1]["pool_order"][-2:] == [f"c5.xlarge@{subnets[0]}", f"c5.xlarge@{subnets[1]}"]


def test_an_on_demand_launch_walks_the_ladder_in_its_configured_order(aws, network, tmp_path):
    # on-demand capacity is never reclaimed: a spot reclaim says nothing about it
    subnets = network["subnets"][:2]
    store = JsonFileStateStore(tmp_path / "state.json")
    machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "finish"})
    summary, _ = run_try(operator(network, max_preemptions=1), store, 1, machine)

    assert [(a["capacity"], a["pool"]) for a in summary["attempts"]] == [
        ("spot", f"c5.xlarge@{subnets[0]}"), ("on_demand", f"c5.xlarge@{subnets[0]}")]
    assert store.get(LEDGER_KEY)["attempts"][1]["pool_order"] is None
