"""Bring your own script, level 1: a plain script that only writes files into a folder.

``airflow_spot_training.examples.plain_folder`` imports nothing of ours: it reads and
writes ``state-<step>.json`` in ``$SPOT_TRAINING_CHECKPOINT_DIR``. Under the synced folder a
file counts as finished once it has not changed for ``settle_seconds``; the newest
finished one is what the next attempt finds there.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import DAG

# [START howto_byo_plain]
from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

with DAG(
    dag_id="spot_training_byo_plain",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "bring-your-own-script"],
) as dag:
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[sys.executable, "-m", "airflow_spot_training.examples.plain_folder",
                     "--steps", "60", "--write-every", "5", "--step-seconds", "0.2"],
            checkpoint_sync={"settle_seconds": 2},  # a file unchanged for 2 s is a finished write
            preemptions=step_preemptions([20]),
        ),
        max_preemptions=1,
        poll_interval=1,
    )
# [END howto_byo_plain]
