"""Bring your own script: a Hugging Face Trainer on simulated spot capacity, resumed from a synced folder.

The training (``airflow_spot_training.examples.hf_tiny``: a 2-layer GPT-2 built from a
config, no download) is an ordinary ``Trainer`` script with one callback. The backend's
``checkpoint_sync`` runs it under the synced checkpoint folder: the newest committed
checkpoint is restored into the folder before each attempt, each finished
``checkpoint-N`` is uploaded to the checkpoint prefix in the background, and on the
notice the callback saves at the next step and the folder is flushed. Spot attempts 1
and 2 are reclaimed past steps 20 and 40; the third attempt runs on on-demand.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.sdk import DAG

# [START howto_byo_huggingface]
from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

with DAG(
    dag_id="spot_training_byo_huggingface",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "bring-your-own-script"],
) as dag:
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[sys.executable, "-m", "airflow_spot_training.examples.hf_tiny",
                     "--steps", "60", "--save-steps", "10", "--step-delay", "0.1"],
            checkpoint_sync=True,  # restore / upload / flush the folder in SPOT_TRAINING_CHECKPOINT_DIR
            preemptions=step_preemptions([20, 40]),
            notice_seconds=10,
        ),
        max_preemptions=2,
        poll_interval=1,
    )
# [END howto_byo_huggingface]
