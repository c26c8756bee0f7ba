"""Drive the real SpotTrainingOperator and SpotTrainingTrigger the way Airflow does, in-process.

``execute`` -> ``TaskDeferred`` -> the trigger is serialized, rebuilt (as a triggerer
would), run until its first event -> ``execute_complete(event)`` -> ... until the
task returns or raises. The task state store is a dict that outlives tries, as the
real one does; XCom is cleared at the start of every try, as in Airflow 3.3.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from airflow.sdk.exceptions import TaskDeferred


class TaskStateStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, retention: Any = None) -> None:
        self.data[key] = value


@dataclass
class TaskInstance:
    try_number: int
    dag_id: str = "gcp_dag"
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    task_id: str = "train"
    map_index: int = -1
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def rebuild_trigger(trigger: Any) -> Any:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


async def first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    raise AssertionError("trigger ended without an event")


@dataclass
class TryResult:
    ti: TaskInstance
    result: Any = None
    deferrals: list[TaskDeferred] = field(default_factory=list)


def run_try(
    operator: Any,
    store: TaskStateStore,
    try_number: int,
    *,
    on_defer: Callable[[TaskDeferred], None] | None = None,
    stop_after_deferrals: int | None = None,
) -> TryResult:
    """Run one task try to its end. ``on_defer`` plays the cloud/VM before each trigger runs.

    ``stop_after_deferrals`` ends the try early, as a worker crash would, right after
    the n-th deferral was requested (its trigger never runs).
    """
    ti = TaskInstance(try_number=try_number)
    context = {"ti": ti, "task_state_store": store}
    outcome = TryResult(ti)
    call: Callable[[], Any] = lambda: operator.execute(context)
    while True:
        try:
            outcome.result = call()
            return outcome
        except TaskDeferred as deferred:
            outcome.deferrals.append(deferred)
            if stop_after_deferrals is not None and len(outcome.deferrals) >= stop_after_deferrals:
                return outcome
            if on_defer is not None:
                on_defer(deferred)
            trigger = rebuild_trigger(deferred.trigger)
            event = asyncio.run(first_event(trigger))
            method = getattr(operator, deferred.method_name)
            call = lambda method=method, payload=event.payload: method(context, payload)
