"""Local demo: a real PyTorch training on simulated spot capacity, no cloud account needed.

The training (a small MLP on generated data, see
``airflow_spot_training.examples.regression``) runs as a detached local process.
Spot attempt 1 is reclaimed once it has committed step 100, attempt 2 once it has
committed step 200 (a SIGTERM notice, then a hard kill); after ``max_preemptions=2``
the third attempt runs on on-demand capacity and finishes, resuming from the last
committed checkpoint.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import DAG, task

# [START howto_operator_spot_training_local]
from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.core.ledger import format_summary
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

with DAG(
    dag_id="spot_training_local_demo",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example"],
) as dag:
    train = SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[
                sys.executable, "-m", "airflow_spot_training.examples.regression",
                "--steps", "300", "--checkpoint-every", "25", "--step-delay", "0.03",
            ],
            preemptions=step_preemptions([100, 200]),  # spot attempts 1 and 2 are reclaimed past steps 100, 200
            notice_seconds=3,  # SIGTERM, then a hard kill 3 s later
            spot_price_per_hour=1.02,
            on_demand_price_per_hour=3.06,
        ),
        max_preemptions=2,
        deadline="30m",
        poll_interval=1,
        progress_log_interval=3,
        retries=1,
    )
    # [END howto_operator_spot_training_local]

    @task
    def report(summary: dict) -> str:
        """Print the ledger as a table; downstream tasks get the same dict from XCom."""
        text = format_summary(summary)
        print(text)
        return text

    report(train.output)
