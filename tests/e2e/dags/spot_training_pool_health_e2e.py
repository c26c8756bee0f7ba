"""End-to-end DAG for tests/e2e/test_pool_health_dags_test.py: two EC2 trainings, one after the other,
sharing pool health through the metadata database (Airflow Variables), against moto.

The test sets E2E_IMAGE_ID, E2E_SUBNETS and the aws_default connection (pointing at a
moto server on loopback) before running ``airflow dags test`` on this DAG.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator

with DAG(
    dag_id="spot_training_pool_health_e2e",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    first, second = (
        EC2SpotTrainingOperator(
            task_id=task_id,
            command="python3 -m my_training",
            image_id=os.environ.get("E2E_IMAGE_ID", "ami-00000000"),
            instance_types=["c5.xlarge"],
            subnet_ids=[s for s in os.environ.get("E2E_SUBNETS", "subnet-0").split(",") if s],
            on_demand_prices={"c5.xlarge": 0.17},
            checkpoint_prefix="s3://spot-ckpt/e2e-pool-health/{{ run_id }}/{{ task.task_id }}",
            max_preemptions=2,
            pool_cooldown=3600,
            poll_interval=0.2,
            progress_log_interval=2,
        )
        for task_id in ("train_first", "train_second")
    )
    first >> second
