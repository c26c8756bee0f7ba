"""DAGs the end-to-end tests run with `airflow dags test` (not examples: see dags/ for those).

Paths for markers and state come from E2E_WORKDIR, set by the tests.
"""

from __future__ import annotations

import os
import sys

import pendulum
from airflow.sdk import DAG

from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

WORKDIR = os.environ.get("E2E_WORKDIR", "/tmp/spot-training-e2e")
TRAIN = [sys.executable, "-m", "airflow_spot_training.examples.regression", "--hidden", "16"]
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["e2e"])


with _dag("e2e_threshold"):
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(command=TRAIN + ["--steps", "200", "--checkpoint-every", "10", "--step-delay", "0.02"],
                             preemptions=step_preemptions([60, 120]), notice_seconds=2),
        max_preemptions=2, poll_interval=0.5, deadline="1h",
    )

# Every spot attempt is reclaimed 10 steps after it resumes (whatever the machine's speed). The
# deadline-aware default budgets 40 s per restart against a 90 s deadline: whatever the first
# attempt took, after its preemption the slack no longer covers another one, and on-demand
# finishes well before the deadline (a slow machine only makes the rate estimate larger).
with _dag("e2e_deadline"):
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(command=TRAIN + ["--steps", "80", "--checkpoint-every", "10", "--step-delay", "0.05"],
                             preemptions=step_preemptions([10, 20, 30, 40, 50, 60, 70]), notice_seconds=2),
        max_preemptions=None,  # the deadline-aware default (deadline + expected_runtime), no preemption cap
        deadline="90s", expected_runtime=8, restart_overhead=40, poll_interval=0.5,
    )


with _dag("e2e_retry"):
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=TRAIN + ["--steps", "80", "--checkpoint-every", "10", "--step-delay", "0.03",
                             "--fail-at-step", "50", "--fail-marker", os.path.join(WORKDIR, "failed-once")],
            preemptions=step_preemptions([20]), notice_seconds=2),
        max_preemptions=3, poll_interval=0.5, retries=1, retry_delay=pendulum.duration(seconds=0),
    )

with _dag("e2e_kill"):
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(command=TRAIN + ["--steps", "100000", "--step-delay", "0.05"], notice_seconds=1),
        deferrable=False, poll_interval=0.5,
    )


# -- bring your own script: framework trainings under the synced checkpoint folder --------
# Spot attempts 1-3 are reclaimed once the prefix holds a checkpoint at step 10, 20, 30:
# attempts 1 and 2 with a 20 s notice, attempt 3 with none (a hard kill at once). The
# threshold max_preemptions=3 puts attempt 4 on on-demand, which finishes.
BYO_PREEMPTIONS = step_preemptions([10, 20, 30], notice_seconds=[20, 20, 0])
BYO_SYNC = {"poll_seconds": 0.2, "settle_seconds": 1.0}

for byo_dag_id, module in (("e2e_byo_hf", "hf_tiny"), ("e2e_byo_lightning", "lightning_tiny")):
    with _dag(byo_dag_id):
        SpotTrainingOperator(
            task_id="train",
            backend=LocalBackend(
                command=[sys.executable, "-m", f"airflow_spot_training.examples.{module}",
                         "--steps", "40", "--save-steps", "5", "--step-delay", "0.1"],
                env={"HF_HUB_OFFLINE": "1"},
                preemptions=BYO_PREEMPTIONS, checkpoint_sync=BYO_SYNC),
            max_preemptions=3, poll_interval=0.5, deadline="1h",
        )

with _dag("e2e_byo_plain"):
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[sys.executable, "-m", "airflow_spot_training.examples.plain_folder",
                     "--steps", "30", "--write-every", "3", "--step-seconds", "0.3"],
            preemptions=step_preemptions([9], notice_seconds=[5]), checkpoint_sync=BYO_SYNC),
        max_preemptions=1, poll_interval=0.5, deadline="1h",
    )

# A 2-node gang (DDP over gloo): node 0 reclaimed past step 30 with a notice, node 1 past step 60 with none.
with _dag("e2e_gang"):
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(command=[sys.executable, "-m", "airflow_spot_training.examples.ddp_regression",
                                      "--steps", "90", "--hidden", "16", "--step-delay", "0.02"],
                             preemptions=step_preemptions([30, 60], notice_seconds=[10, 0]), notice_seconds=10),
        num_nodes=2, max_preemptions=3, poll_interval=0.5,
    )
