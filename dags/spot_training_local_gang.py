"""Local multi-node demo: a 2-node data-parallel training (DDP over gloo) on simulated spot capacity.

Each attempt runs two processes that train together
(``airflow_spot_training.examples.ddp_regression``). Spot attempt 1 loses node 0 past step
40 with a notice (every rank writes its shard of the same step), attempt 2 loses node 1
past step 80 with no notice at all (its survivor's shard alone commits nothing); attempt 3
resumes every rank from the newest step both committed and finishes.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import DAG

# [START howto_operator_spot_training_gang]
from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

with DAG(
    dag_id="spot_training_local_gang",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "multi-node"],
) as dag:
    train = SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[sys.executable, "-m", "airflow_spot_training.examples.ddp_regression",
                     "--steps", "120", "--checkpoint-every", "10", "--step-delay", "0.05"],
            # one node reclaimed past step 40 (with a notice), another past step 80 (no notice)
            preemptions=step_preemptions([40, 80], notice_seconds=[10, 0]),
            notice_seconds=10,
            spot_price_per_hour=1.02,  # per node: the ledger bills price x nodes x seconds
        ),
        num_nodes=2,  # every attempt: two machines training together
        max_preemptions=3,
        poll_interval=1,
    )
    # [END howto_operator_spot_training_gang]
