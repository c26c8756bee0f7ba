"""Drive a SpotTrainingOperator the way Airflow does, one task try at a time.

``run_try`` calls ``execute``; on ``TaskDeferred`` it rebuilds the trigger from its
``serialize()`` output (as a triggerer would), runs it to its first event in a
fresh event loop, and calls the method the operator deferred to with that event,
until the try returns or raises. The ledger lives in a JSON-file task state store
that survives tries, as Airflow 3.3's does; XCom is per try, as in Airflow.

``machine`` is the test playing the cloud machine: it is called with the
attempt's handle before each SpotTrainingTrigger runs, and acts at the cloud
boundary (writes checkpoints to moto's S3, reclaims or shuts down the instance).
"""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path
from typing import Any, Callable

from airflow.sdk.exceptions import TaskDeferred


class JsonFileStateStore:
    """The task state store's interface (``get`` / ``set``), kept in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._load().get(key, default)

    def set(self, key: str, value: Any, retention: Any = None) -> None:
        data = self._load()
        data[key] = json.loads(json.dumps(value))
        self.path.write_text(json.dumps(data))


class TryInstance:
    """The task-instance fields the operator reads, and an XCom store for this try."""

    def __init__(self, try_number: int, dag_id: str = "spot_dag", run_id: str = "manual__1",
                 task_id: str = "train", map_index: int = -1) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = dag_id, run_id, task_id, map_index
        self.try_number = try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = json.loads(json.dumps(value))


def rebuild(trigger: Any) -> Any:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


async def first_event(trigger: Any, timeout: float = 60.0) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(run(), timeout)


def run_try(operator: Any, store: JsonFileStateStore, try_number: int,
            machine: Callable[[Any], None] | None = None) -> tuple[Any, TryInstance]:
    """Run one task try to its end; return (result, task instance). Exceptions propagate."""
    ti = TryInstance(try_number)
    context: dict[str, Any] = {"ti": ti, "task_state_store": store}
    step: Callable[[], Any] = lambda: operator.execute(context)  # noqa: E731
    while True:
        try:
            return step(), ti
        except TaskDeferred as deferred:
            trigger = rebuild(deferred.trigger)
            if type(trigger).__name__ == "SpotTrainingTrigger":
                if machine is not None:
                    machine(trigger.attempt_handle)
                event = asyncio.run(first_event(trigger))
            else:  # waiting for spot capacity: no need to sleep in a test
                event = None
            method = getattr(operator, deferred.method_name)
            step = lambda method=method, event=event: method(context, event)  # noqa: E731
