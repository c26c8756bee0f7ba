"""Every read the UI plugin makes from the metadata database, in one place.

The operator keeps two copies of a task instance's ledger (see
``operators/spot_training.py``): the full ledger in the task state store (key
``spot_training_ledger``; it survives retries, expires with the store's retention) and
its summary in XCom (key ``ledger``; written at every change, kept with the run).

* One task instance: both copies and the task instance's state, three primary-key or
  indexed look-ups.
* The overview: the ``ledger`` XCom rows (``idx_xcom_key``) joined to their task
  instance and DAG run, restricted in SQL to the DAGs the user may read, the DAG
  filter and the date range; the ledger's own figures are read in Python (the value
  is JSON, and the same code must run on PostgreSQL, MySQL and SQLite).

No cloud is asked anything here: what a page shows is what the operator recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from sqlalchemy import and_, select

from airflow.models.dagrun import DagRun
from airflow.models.task_state_store import TaskStateStoreModel
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow_spot_training.operators.spot_training import LEDGER_KEY, XCOM_LEDGER_KEY

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class TaskInstanceLedger:
    """What the database holds for one task instance: its state and both ledger copies."""

    state: str | None
    full: Any
    published: Any


class LedgerRow(NamedTuple):
    """One spot-training task instance of the overview; its ledger is read separately."""

    dag_run_id: int
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    run_after: datetime | None
    #: when the operator last published the ledger: a new value means a new ledger
    published_at: datetime | None

    @property
    def ledger_key(self) -> tuple[int, str, int, datetime | None]:
        """Identifies one published version of the ledger."""
        return (self.dag_run_id, self.task_id, self.map_index, self.published_at)


def _state(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def task_instance_ledger(session: Session, dag_id: str, run_id: str, task_id: str,
                         map_index: int) -> TaskInstanceLedger | None:
    """Both ledger copies of one task instance; None when the task instance does not exist."""
    ti_state = session.execute(
        select(TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id, TaskInstance.map_index == map_index,
        )
    ).first()
    if ti_state is None:
        return None
    full = session.scalar(
        select(TaskStateStoreModel.value).where(
            TaskStateStoreModel.dag_id == dag_id, TaskStateStoreModel.run_id == run_id,
            TaskStateStoreModel.task_id == task_id, TaskStateStoreModel.map_index == map_index,
            TaskStateStoreModel.key == LEDGER_KEY,
        )
    )
    published = session.scalar(
        select(XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == task_id,
            XComModel.map_index == map_index, XComModel.key == XCOM_LEDGER_KEY,
        )
    )
    return TaskInstanceLedger(state=_state(ti_state[0]), full=full, published=published)


def ledger_rows(session: Session, *, readable_dag_ids: Iterable[str], dag_id: str | None = None,
                since: datetime | None = None, until: datetime | None = None) -> list[LedgerRow]:
    """Every task instance with a ``ledger`` XCom in the DAGs a user may read, newest run first.

    The ledgers themselves are not read here (:func:`published_ledgers` does, for the rows
    whose figures are not known yet), so the query stays cheap however many there are.

    :param readable_dag_ids: the DAGs the user may read (from the auth manager); nothing else
        is ever selected.
    :param dag_id: only this DAG.
    :param since: only runs whose ``run_after`` is at or after this time.
    :param until: only runs whose ``run_after`` is before this time.
    """
    allowed = set(readable_dag_ids)
    if dag_id is not None:
        allowed &= {dag_id}
    if not allowed:
        return []
    query = (
        select(
            XComModel.dag_run_id, XComModel.dag_id, XComModel.run_id, XComModel.task_id, XComModel.map_index,
            TaskInstance.state, DagRun.run_after, XComModel.timestamp,
        )
        .join(DagRun, DagRun.id == XComModel.dag_run_id)
        .join(TaskInstance, and_(
            TaskInstance.dag_id == XComModel.dag_id, TaskInstance.run_id == XComModel.run_id,
            TaskInstance.task_id == XComModel.task_id, TaskInstance.map_index == XComModel.map_index,
        ))
        .where(XComModel.key == XCOM_LEDGER_KEY, XComModel.dag_id.in_(sorted(allowed)))
        .order_by(DagRun.run_after.desc(), XComModel.dag_id, XComModel.task_id, XComModel.map_index)
    )
    if since is not None:
        query = query.where(DagRun.run_after >= since)
    if until is not None:
        query = query.where(DagRun.run_after < until)
    # Core execution: ten thousand plain tuples, no ORM identity bookkeeping
    return [LedgerRow(r[0], r[1], r[2], r[3], r[4], _state(r[5]), r[6], r[7])
            for r in session.connection().execute(query)]


def published_ledgers(session: Session, rows: list[LedgerRow],
                      chunk: int = 1000) -> dict[tuple[int, str, int, datetime | None], Any]:
    """The ``ledger`` XCom values of ``rows``, by :attr:`LedgerRow.ledger_key`."""
    wanted = {(r.dag_run_id, r.task_id, r.map_index) for r in rows}
    run_ids = sorted({r.dag_run_id for r in rows})
    values: dict[tuple[int, str, int, datetime | None], Any] = {}
    for start in range(0, len(run_ids), chunk):
        query = select(XComModel.dag_run_id, XComModel.task_id, XComModel.map_index, XComModel.timestamp,
                       XComModel.value).where(XComModel.key == XCOM_LEDGER_KEY,
                                              XComModel.dag_run_id.in_(run_ids[start:start + chunk]))
        for run_pk, task_id, map_index, published_at, value in session.connection().execute(query):
            if (run_pk, task_id, map_index) in wanted:
                values[(run_pk, task_id, map_index, published_at)] = value
    return values
