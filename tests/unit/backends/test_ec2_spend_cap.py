"""The spend cap on EC2: the on-demand price table must cover every instance type of the ladder,
checked when the DAG is parsed (or left to run time with the Pricing API)."""

from __future__ import annotations

import pytest

from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError

ARGS = dict(task_id="train", command="python3 -m my_training", image_id="ami-00000000000000000",
            instance_types=["c5.xlarge", "m5.xlarge"], subnet_ids=["subnet-a", "subnet-b"],
            checkpoint_prefix="s3://bucket/runs", expected_runtime=3600, max_cost=10)


def test_a_cap_needs_a_price_for_every_instance_type_of_the_ladder():
    with pytest.raises(SpotTrainingConfigError, match=r"train: max_cost= needs the backend's on-demand price .* "
                                                      r"give EC2SpotBackend\(on_demand_prices=\.\.\.\) for every "
                                                      r"instance type"):
        EC2SpotTrainingOperator(**ARGS, on_demand_prices={"c5.xlarge": 0.17})


def test_the_dearest_type_of_the_ladder_is_the_configured_on_demand_price():
    capped = EC2SpotTrainingOperator(**ARGS, on_demand_prices={"c5.xlarge": 0.17, "m5.xlarge": 0.192})
    assert capped.backend.configured_price(Capacity.ON_DEMAND) == 0.192
    assert capped.backend.configured_price(Capacity.SPOT) is None  # known only from the instance


def test_with_the_pricing_api_the_prices_are_looked_up_at_run_time():
    capped = EC2SpotTrainingOperator(**ARGS, use_pricing_api=True)
    assert capped.spend_cap.max_cost == 10.0


def test_a_templated_ladder_is_checked_once_rendered():
    templated = {**ARGS, "instance_types": "{{ params.types }}"}
    assert EC2SpotTrainingOperator(**templated, on_demand_prices={"c5.xlarge": 0.17}).spend_cap.active
