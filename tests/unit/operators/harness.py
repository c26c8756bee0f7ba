"""Drive a SpotTrainingOperator through its deferrals in-process, the way Airflow does.

Stands in for the Airflow task runner only: a task-state store and XCom that
behave like Airflow's (the store survives tries, XCom is cleared at each new try),
and a loop that runs each trigger to its event and resumes the named method.
Backends, triggers, the ledger and the training are all real.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk.exceptions import TaskDeferred


class StateStore:
    """The task state store: JSON values, kept across tries."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.data[key]) if key in self.data else default

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = json.dumps(value)


@dataclass
class TI:
    dag_id: str = "dag"
    run_id: str = "run1"
    task_id: str = "train"
    map_index: int = -1
    try_number: int = 1
    xcoms: dict[str, Any] = field(default_factory=dict)
    #: return values of this task in earlier runs, oldest first (what ``include_prior_dates`` reaches)
    earlier_returns: list[Any] = field(default_factory=list)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = json.loads(json.dumps(value))

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", include_prior_dates: bool = False,
                  *, map_indexes: Any = None, default: Any = None) -> Any:
        """This run's XCom of the task, else (with ``include_prior_dates``) the newest earlier run's."""
        if task_ids not in (None, self.task_id):
            return default
        if key in self.xcoms:
            return self.xcoms[key]
        if include_prior_dates and key == "return_value" and self.earlier_returns:
            return self.earlier_returns[-1]
        return default


@dataclass
class TaskRun:
    """One task instance across tries."""

    store: StateStore = field(default_factory=StateStore)
    ti: TI = field(default_factory=TI)
    deferrals: list[Any] = field(default_factory=list)

    extra_context: dict[str, Any] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        from airflow.sdk.execution_time.context import OutletEventAccessors

        self.extra_context.setdefault("outlet_events", OutletEventAccessors())  # Airflow's own, per try
        return {"ti": self.ti, "task_state_store": self.store, **self.extra_context}

    def new_try(self) -> None:
        self.ti.try_number += 1
        self.ti.xcoms.clear()  # Airflow 3 clears XCom at the start of every try

    def run(self, operator: Any, max_deferrals: int = 50) -> Any:
        """Run one try to its end: the return value, or the exception the try ends with."""
        method, kwargs = operator.execute, {}
        for _ in range(max_deferrals):
            try:
                result = method(self.context(), **kwargs)
                self.ti.xcoms["return_value"] = json.loads(json.dumps(result))
                return result
            except TaskDeferred as deferred:
                self.deferrals.append(deferred.trigger)
                event = asyncio.run(_first_event(deferred.trigger))
                method = getattr(operator, deferred.method_name)
                kwargs = {"event": event}
        raise AssertionError("too many deferrals")


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")
