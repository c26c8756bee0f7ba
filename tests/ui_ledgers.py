"""Recorded spot-training task instances, written straight into a real metadata database.

For the UI plugin's tests and its benchmark: ledgers are built with the real core
(``RunLedger`` and ``AttemptRecord``, then ``to_dict()`` / ``summary()``), and stored the
way the operator stores them through the execution API: the full ledger in the task
state store (``json.dumps``), the summary in XCom (``XComModel.serialize_value``), each
with its DAG, DAG run and task instance rows.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert, select

from airflow.models.dag import DagModel
from airflow.models.dagbundle import DagBundleModel
from airflow.models.dagrun import DagRun
from airflow.models.task_state_store import TaskStateStoreModel
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow_spot_training.core.ledger import AttemptRecord, Escalation, RunLedger
from airflow_spot_training.operators.spot_training import LEDGER_KEY, XCOM_LEDGER_KEY

BUNDLE = "spot-ui-synthetic"  # a bundle of its own: no DAG processor owns these DAGs
T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
RUN_SPACING = timedelta(hours=1)  # run ``i`` of a seed has run_after T0 + i * RUN_SPACING

# Seeds a database from the environment's Airflow configuration: count, first index, DAG ids.
SEED_SCRIPT = """
import sys
from airflow.utils.session import create_session
from tests.ui_ledgers import seed
with create_session() as session:
    seed(session, count=int(sys.argv[1]), first=int(sys.argv[2]), dag_ids=sys.argv[3].split(","))
"""


def seed_command(python: str, *, count: int, first: int, dag_ids: list[str]) -> list[str]:
    """The command that seeds the database a process environment points at (run from the repo root)."""
    return [python, "-c", SEED_SCRIPT, str(count), str(first), ",".join(dag_ids)]


def synthetic_ledger(rng: random.Random, run_key: str, started: float) -> RunLedger:
    """A finished training: some reclaims on spot, maybe an escalation to on-demand."""
    preemptions = rng.choice([0, 0, 1, 1, 2, 3])
    escalate = preemptions >= 2
    attempts, now, step = [], started, 0
    for number in range(1, preemptions + 2):
        capacity = "on_demand" if escalate and number == preemptions + 1 else "spot"
        seconds = rng.uniform(300, 1800)
        last = number == preemptions + 1
        reached = 100 if last else min(99, step + rng.randint(5, 40))
        attempts.append(AttemptRecord(
            number, capacity, f"{run_key}-{number}", 1, outcome="succeeded" if last else "preempted",
            reason="" if last else "spot capacity reclaimed", launched_at=now, started_at=now,
            ended_at=now + seconds, preemptions=0 if last else 1, start_step=max(0, step - rng.randint(0, 5)),
            checkpoint_step=reached, total_steps=100, price_per_hour=1.0 if capacity == "on_demand" else 0.3,
        ))
        now, step = now + seconds + 30, reached
    escalations = [Escalation(preemptions + 1, attempts[-1].launched_at - 5, "on_demand",
                              f"{preemptions} preemption(s) reached the threshold max_preemptions=2")] if escalate else []
    return RunLedger(run_key=run_key, checkpoint_prefix=f"s3://bucket/{run_key}", first_launch_at=started,
                     attempts=attempts, escalations=escalations, tries=[1],
                     prices={"spot": 0.3, "on_demand": 1.0})


def ensure_dags(session: Any, dag_ids: list[str]) -> None:
    """DAG rows (and their bundle) so the auth manager knows the DAGs."""
    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    known = set(session.scalars(select(DagModel.dag_id).where(DagModel.dag_id.in_(dag_ids))))
    for dag_id in dag_ids:
        if dag_id not in known:
            session.add(DagModel(dag_id=dag_id, bundle_name=BUNDLE, fileloc=f"/dags/{dag_id}.py", is_stale=False,
                                 max_active_tasks=16, max_consecutive_failed_dag_runs=0,
                                 has_task_concurrency_limits=False, timetable_type=""))
    session.flush()


def seed(session: Any, *, count: int, dag_ids: list[str], first: int = 0, seed_value: int = 0,
         task_id: str = "train") -> None:
    """Add ``count`` finished spot-training task instances, one per DAG run, spread over days.

    :param first: index of the first run (to add more rows to an already seeded database).
    """
    rng = random.Random(seed_value + first)
    ensure_dags(session, dag_ids)
    for index in range(first, first + count):
        dag_id = dag_ids[index % len(dag_ids)]
        run_id = f"scheduled__{index:06d}"
        run_after = T0 + index * RUN_SPACING
        ledger = synthetic_ledger(rng, f"{dag_id}.{run_id}.{task_id}", run_after.timestamp())
        run_pk = session.execute(insert(DagRun.__table__).values(
            dag_id=dag_id, run_id=run_id, run_type="scheduled", run_after=run_after, logical_date=run_after,
            state="success", start_date=run_after, end_date=run_after + timedelta(hours=1),
        ).returning(DagRun.__table__.c.id)).scalar_one()
        session.execute(insert(TaskInstance.__table__).values(
            id=uuid.uuid4(), dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=-1, state="success",
            try_number=1, pool="default_pool", pool_slots=1, start_date=run_after,
            end_date=run_after + timedelta(hours=1), operator="SpotTrainingOperator",
        ))
        summary = ledger.summary()
        for attempt in summary["attempts"]:  # links as backends record them (loopback: never fetched)
            attempt["links"] = [{"name": "console", "url": f"http://127.0.0.1:9/console/{run_id}/{attempt['number']}"}]
        if index == first:
            summary["attempts"][0]["links"].append({"name": "bad", "url": "javascript:alert(1)"})
        session.execute(insert(XComModel.__table__).values(
            dag_run_id=run_pk, task_id=task_id, map_index=-1, key=XCOM_LEDGER_KEY, dag_id=dag_id, run_id=run_id,
            value=XComModel.serialize_value(summary), timestamp=run_after,
        ))
        session.execute(insert(TaskStateStoreModel.__table__).values(
            dag_run_id=run_pk, task_id=task_id, map_index=-1, key=LEDGER_KEY, dag_id=dag_id, run_id=run_id,
            value=json.dumps(ledger.to_dict()), updated_at=run_after,
        ))
    session.commit()
