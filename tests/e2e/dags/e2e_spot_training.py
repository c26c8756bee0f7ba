"""DAGs for the distributed end-to-end suite: tiny trainings on the local backend.

Each DAG is one fault scenario of tests/e2e/test_distributed_faults.py, or a training the
UI plugin's suite (tests/e2e/test_ui_plugin.py) looks at. The workload
is airflow_spot_training.examples.tiny (a checkpointing loop, no PyTorch), polled
every second, with short notice windows.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_spot_training.backends.local import LocalBackend, fixed_preemptions, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def tiny(steps: int, step_seconds: float, every: int = 5, *extra: str) -> list[str]:
    return [sys.executable, "-m", "airflow_spot_training.examples.tiny", "--steps", str(steps),
            "--step-seconds", str(step_seconds), "--checkpoint-every", str(every), *extra]


class LaunchThenHangBackend(LocalBackend):
    """Fault injection for "the worker dies between launch and defer".

    After the launch returns (the training is running), the task process announces it
    in ``$SPOT_E2E_HOLD_DIR/<token>.held`` (with its pid) and hangs, once per token, so
    the test can kill the Celery worker at exactly that point. The triggerer rebuilds a
    plain LocalBackend: the hook exists only at the launch boundary.
    """

    def launch(self, request):  # type: ignore[no-untyped-def]
        handle = super().launch(request)
        hold_dir = os.environ.get("SPOT_E2E_HOLD_DIR")
        if hold_dir:
            marker = Path(hold_dir) / f"{request.token}.held"
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return handle  # the hang happened once already: behave normally
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            time.sleep(600)  # killed here by the test
        return handle

    def serialize(self):  # type: ignore[no-untyped-def]
        _, kwargs = super().serialize()
        return "airflow_spot_training.backends.local.LocalBackend", kwargs


def _dag(dag_id: str, **kwargs) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False, max_active_runs=16,
               max_active_tasks=256, tags=["e2e"], **kwargs)


def _train(task_id: str, backend: LocalBackend, **kwargs) -> SpotTrainingOperator:
    kwargs.setdefault("retries", 0)
    return SpotTrainingOperator(task_id=task_id, backend=backend, poll_interval=1, progress_log_interval=30,
                                retry_delay=timedelta(seconds=1), **kwargs)


# 11 trainings per run, each long enough to be deferred when a triggerer is killed.
FLEET_TASKS = 11
with _dag("e2e_fleet"):
    for i in range(FLEET_TASKS):
        _train(f"train_{i:02d}", LocalBackend(tiny(120, 0.5, 10), notice_seconds=2))

# Trainings with no scheduled reclaim; the test reclaims all of them at once.
PREEMPT_ALL_TASKS = 6
with _dag("e2e_preempt_all"):
    for i in range(PREEMPT_ALL_TASKS):
        _train(f"train_{i:02d}", LocalBackend(tiny(120, 0.25, 10), notice_seconds=2), max_preemptions=3)

# Reclaimed after 4 s; the notice checkpoint stalls and the hard kill cuts it short.
with _dag("e2e_checkpoint_write_interrupted"):
    _train("train", LocalBackend(tiny(40, 0.2, 5, "--stall-interruption-save"),
                                 preemptions=fixed_preemptions([4]), notice_seconds=1), max_preemptions=3)

# The worker is killed after launch, before defer; the Airflow retry must re-attach.
with _dag("e2e_worker_crash"):
    _train("train", LaunchThenHangBackend(tiny(40, 0.25, 5), notice_seconds=2), retries=2)

# A long training, marked failed from the API while deferred.
with _dag("e2e_mark_failed"):
    _train("train", LocalBackend(tiny(2000, 0.25, 20), notice_seconds=2))

# Each training is reclaimed once and relaunched: the scheduler must be there for it.
SCHEDULER_TASKS = 4
with _dag("e2e_scheduler_restart"):
    for i in range(SCHEDULER_TASKS):
        _train(f"train_{i:02d}", LocalBackend(tiny(40, 0.25, 5), preemptions=fixed_preemptions([6]),
                                              notice_seconds=1), max_preemptions=3)

# The UI suite (tests/e2e/test_ui_plugin.py): reclaimed at steps 10 and 20 on spot, then
# escalated to on-demand by max_preemptions=2; prices so the view has cost and savings.
UI_PRICES = {"spot_price_per_hour": 0.3, "on_demand_price_per_hour": 1.0}
with _dag("e2e_ui"):
    _train("train", LocalBackend(tiny(30, 0.2, 5), preemptions=step_preemptions([10, 20]), notice_seconds=1,
                                 **UI_PRICES), max_preemptions=2)

# The UI suite watches this one while it runs (and reclaims it by hand), then marks it failed.
with _dag("e2e_ui_live"):
    _train("train", LocalBackend(tiny(2000, 0.25, 5), notice_seconds=1, **UI_PRICES), max_preemptions=3)
