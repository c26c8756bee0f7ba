"""Bring your own script: a PyTorch Lightning training on simulated spot capacity, resumed from a synced folder.

The training (``airflow_spot_training.examples.lightning_tiny``) is an ordinary Lightning
script with one callback and a resumable data loader. The backend's ``checkpoint_sync``
runs it under the synced checkpoint folder. Spot attempt 1 is reclaimed past step 20 with
a notice, attempt 2 past step 40 with none (a hard kill: the newest uploaded checkpoint
is the resume point); the third attempt runs on on-demand.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import DAG

# [START howto_byo_lightning]
from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

with DAG(
    dag_id="spot_training_byo_lightning",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "bring-your-own-script"],
) as dag:
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[sys.executable, "-m", "airflow_spot_training.examples.lightning_tiny",
                     "--steps", "60", "--save-steps", "10", "--step-delay", "0.1"],
            checkpoint_sync={"keep_last": 2, "max_bytes_per_second": 200e6},
            preemptions=step_preemptions([20, 40], notice_seconds=[10, 0]),  # the second one without notice
        ),
        max_preemptions=2,
        poll_interval=1,
    )
# [END howto_byo_lightning]
