"""The load benchmark's DAG: many tiny spot trainings with random reclaims.

Sized by environment variables that benchmarks/load_local.py sets for every
Airflow process: SPOT_BENCH_TASKS (trainings per run), SPOT_BENCH_STEPS and
SPOT_BENCH_STEP_SECONDS (how long each training runs), SPOT_BENCH_PREEMPTIONS_PER_HOUR
(the reclaim rate of each spot attempt), SPOT_BENCH_POLL_INTERVAL.
"""

from __future__ import annotations

import os
import sys

import pendulum
from airflow.sdk import DAG

from airflow_spot_training.backends.local import LocalBackend, random_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

TASKS = int(os.environ.get("SPOT_BENCH_TASKS", "20"))
STEPS = os.environ.get("SPOT_BENCH_STEPS", "420")
STEP_SECONDS = os.environ.get("SPOT_BENCH_STEP_SECONDS", "1.0")
PER_HOUR = float(os.environ.get("SPOT_BENCH_PREEMPTIONS_PER_HOUR", "20"))
POLL = float(os.environ.get("SPOT_BENCH_POLL_INTERVAL", "2"))

with DAG(dag_id="spot_training_load", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=64, max_active_tasks=256, tags=["benchmark"]):
    for i in range(TASKS):
        SpotTrainingOperator(
            task_id=f"train_{i:03d}",
            backend=LocalBackend(
                [sys.executable, "-m", "airflow_spot_training.examples.tiny", "--steps", STEPS,
                 "--step-seconds", STEP_SECONDS, "--checkpoint-every", "10"],
                preemptions=random_preemptions(per_hour=PER_HOUR, seed=11),
                notice_seconds=2,
            ),
            max_preemptions=2,
            poll_interval=POLL,
            progress_log_interval=600,
        )
