"""The spot-training UI: a FastAPI app the api-server mounts under :data:`URL_PREFIX`.

Pages (HTML, JavaScript, CSS, served from this package; nothing from a CDN):

* ``/task-instance?dag_id=&run_id=&task_id=&map_index=``: one task instance's attempts
  as a timeline; shown as the "Spot training" tab of every task instance;
* ``/overview``: every spot-training task instance the user may read, with filters and a
  chart of savings and preemptions per DAG over time; shown in the navigation.

JSON endpoints the pages poll: ``/api/task-instance`` and ``/api/overview``.

Access: every route needs an authenticated user (Airflow's auth manager, the session
cookie or a bearer token, exactly as the REST API); the JSON endpoints need the same
DAG-level permission as Airflow's own task-instance endpoints (``GET`` on
``TASK_INSTANCE`` of the DAG), and the overview only ever selects the DAGs the auth
manager says the user may read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Response
from fastapi.responses import FileResponse

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, get_user, requires_access_dag
from airflow_spot_training.ui import ledger_store, ledger_view
from airflow_spot_training.ui.plugin import URL_PREFIX

STATIC = Path(__file__).parent / "static"
MAX_PAGE = 500
#: the assets the pages load, by name: nothing else under the package is served
ASSETS = {"spot_training.css": "text/css", "icon.svg": "image/svg+xml", "common.js": "text/javascript",
          "task_instance.js": "text/javascript", "overview.js": "text/javascript"}

_read_task_instances = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers={"Cache-Control": "no-store"})


def task_instance_page() -> FileResponse:
    """The task-instance view (its data comes from ``/api/task-instance``)."""
    return _page("task_instance.html")


def overview_page() -> FileResponse:
    """The overview page (its data comes from ``/api/overview``)."""
    return _page("overview.html")


def asset(name: str) -> FileResponse:
    """A stylesheet or script of the pages (behind the auth manager like everything else)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name])


def task_instance_data(
    session: SessionDep,
    dag_id: Annotated[str, Query(min_length=1)],
    run_id: Annotated[str, Query(min_length=1)],
    task_id: Annotated[str, Query(min_length=1)],
    map_index: int = -1,
) -> dict[str, Any]:
    """The task-instance view's model (see :func:`ledger_view.task_instance_view`).

    :param dag_id: the task instance's DAG (its read permission is checked before this runs).
    :param run_id: its DAG run.
    :param task_id: its task.
    :param map_index: its map index; -1 when the task is not mapped.
    """
    found = ledger_store.task_instance_ledger(session, dag_id, run_id, task_id, map_index)
    if found is None:
        raise HTTPException(404, f"no task instance {dag_id}/{run_id}/{task_id}[{map_index}]")
    view = ledger_view.task_instance_view(found.full, found.published, now=time.time(), ti_state=found.state)
    return {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index, **view}


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class FiguresCache:
    """Overview figures by published version of a ledger, so a refresh reads only what changed.

    A ledger XCom is rewritten (with a new timestamp) at every change, so a version, once
    read, never changes. Bounded: the least recently used versions go first.

    :param max_entries: how many versions to keep (one per task instance is enough).
    """

    NOT_A_LEDGER: dict[str, Any] = {}

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def figures(self, session: Any, rows: list[ledger_store.LedgerRow]) -> tuple[list[dict[str, Any] | None], int]:
        """Each row's figures (None when its XCom is not a spot-training ledger, or just changed),
        and how many ledgers had to be read from the database for them."""
        with self._lock:
            missing = [r for r in rows if r.ledger_key not in self._entries]
        read = ledger_store.published_ledgers(session, missing) if missing else {}
        with self._lock:
            for key, value in read.items():
                self._entries[key] = ledger_view.overview_row(value) or self.NOT_A_LEDGER
            out = []
            for row in rows:
                figures = self._entries.get(row.ledger_key)
                if figures is not None:
                    self._entries.move_to_end(row.ledger_key)
                out.append(figures if figures is not self.NOT_A_LEDGER else None)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return out, len(read)


FIGURES = FiguresCache()


def _matching(session: Any, rows: list[ledger_store.LedgerRow],
              outcome: str | None) -> tuple[list[tuple[ledger_store.LedgerRow, dict[str, Any]]], int]:
    """The rows whose XCom is a spot-training ledger (with that outcome), with their figures;
    and how many ledgers were read from the database."""
    figures, read = FIGURES.figures(session, rows)
    return [(row, f) for row, f in zip(rows, figures)
            if f is not None and (not outcome or f["outcome"] == outcome)], read


def _table_row(row: ledger_store.LedgerRow, figures: dict[str, Any]) -> dict[str, Any]:
    return {"dag_id": row.dag_id, "run_id": row.run_id, "task_id": row.task_id, "map_index": row.map_index,
            "state": row.state, "run_after": _epoch(row.run_after), **figures}


def overview_data(
    session: SessionDep,
    user: GetUserDep,
    response: Response,
    dag_id: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """Every spot-training task instance the user may read, filtered; totals and the chart.

    :param dag_id: only this DAG.
    :param outcome: only ledgers whose outcome is this (``succeeded``, ``failed``, ``running``...).
    :param since: only runs whose ``run_after`` is at or after this time (ISO 8601).
    :param until: only runs whose ``run_after`` is before this time (ISO 8601).
    :param offset: the first row of the table page.
    :param limit: rows in the table page (totals and chart cover every matching row).

    The response header ``X-Spot-Training-Ledgers-Read`` says how many ledgers had to be read
    from the database (the others' figures were known from an earlier request).
    """
    readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    rows = ledger_store.ledger_rows(session, readable_dag_ids=readable, dag_id=dag_id, since=since, until=until)
    matching, read = _matching(session, rows, outcome)
    response.headers["X-Spot-Training-Ledgers-Read"] = str(read)
    figures = [f for _, f in matching]
    timeline = [{"dag_id": row.dag_id, "run_after": _epoch(row.run_after), "saved": f["saved"],
                 "preemptions": f["preemptions"]} for row, f in matching]
    return {
        "total_entries": len(matching),
        "offset": offset,
        "rows": [_table_row(row, f) for row, f in matching[offset:offset + limit]],
        "totals": ledger_view.totals(figures),
        "chart": ledger_view.savings_chart(timeline),
        "dag_ids": sorted({row.dag_id for row, _ in matching}) if dag_id is None else [dag_id],
        "outcomes": sorted({str(f["outcome"]) for f in figures}),
    }


def create_app() -> FastAPI:
    """The app, every route behind the auth manager (anonymous requests get 401)."""
    app = FastAPI(title="Spot training", dependencies=[Depends(get_user)], docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_api_route("/task-instance", task_instance_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/overview", overview_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/api/task-instance", task_instance_data, methods=["GET"],
                      dependencies=[_read_task_instances])
    app.add_api_route("/api/overview", overview_data, methods=["GET"], dependencies=[_read_task_instances])
    app.add_api_route("/static/{name}", asset, methods=["GET"], include_in_schema=False)
    return app
