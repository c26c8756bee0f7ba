"""Run a SpotTrainingOperator the way Airflow's task runner and triggerer do, in-process.

One :class:`TaskRun` is one task instance across its tries:

* ``execute`` -> ``TaskDeferred`` -> the trigger is serialized and rebuilt from its
  kwargs (as a triggerer does with the row in the metadata database), run in a fresh
  event loop to its first event -> the method the operator deferred to is called with
  the event -> ... until the try returns or raises. Every trigger runs for real,
  ``SpotTrainingTrigger`` and the ``TimeDeltaTrigger`` of a wait for spot capacity alike.
* A trigger that raises ends the try as Airflow does: the task fails (:class:`TriggerFailed`).
* The task state store survives tries and keeps JSON only; XCom is cleared at the start
  of every try (Airflow 3.3 behaviour, see docs/architecture.md).
* A try that defers more than ``max_deferrals`` times ends with :class:`UnboundedLoop`,
  so a relaunch loop fails a test instead of hanging it.

It replaces the three drivers written before it (``tests/spot_harness.py``,
``tests/e2e/operator_harness.py``, ``tests/unit/operators/harness.py``): it does what
each of them does (stop after N deferrals, per-try XCom, a JSON state store) and runs
every trigger instead of skipping the waits.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from airflow.sdk.exceptions import TaskDeferred


class TriggerFailed(RuntimeError):
    """A trigger raised instead of firing an event: Airflow fails the task try."""


class UnboundedLoop(AssertionError):
    """The try deferred more often than any bounded run needs."""


class StateStore:
    """The task state store: JSON values, kept across tries, scoped to one task instance."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return json.loads(self.data[key]) if key in self.data else default

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        with self._lock:
            self.data[key] = json.dumps(value)


@dataclass
class TaskInstance:
    """The task-instance fields the operator reads, and this try's XCom."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = json.loads(json.dumps(value))


@dataclass
class TryOutcome:
    """How one try ended: a result, an error, or parked at a deferral (``until_deferral``)."""

    ti: TaskInstance
    result: Any = None
    error: BaseException | None = None
    deferrals: list[Any] = field(default_factory=list)
    parked: Any = None  # the trigger the try was left deferred on

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.parked is None


def rebuild(trigger: Any) -> Any:
    """What a triggerer does: the class from its path, the kwargs through Airflow's serializer."""
    from airflow.serialization.serialized_objects import BaseSerialization

    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    stored = json.loads(json.dumps(BaseSerialization.serialize(kwargs)))  # the metadata DB row
    return getattr(importlib.import_module(module), name)(**BaseSerialization.deserialize(stored))


async def first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    raise TriggerFailed(f"{type(trigger).__name__} ended without an event")


class TaskRun:
    """One task instance across tries.

    :param dag_id: the DAG id the task instance reports.
    :param run_id: the DAG run id.
    :param task_id: the task id.
    :param map_index: the map index (-1 for an unmapped task).
    """

    def __init__(self, dag_id: str = "conformance", run_id: str = "manual__2026-01-01T00:00:00+00:00",
                 task_id: str = "train", map_index: int = -1) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = dag_id, run_id, task_id, map_index
        self.store = StateStore()
        self.tries: list[TryOutcome] = []

    def context(self, ti: TaskInstance) -> dict[str, Any]:
        return {"ti": ti, "task_state_store": self.store}

    def new_ti(self) -> TaskInstance:
        return TaskInstance(self.dag_id, self.run_id, self.task_id, self.map_index, len(self.tries) + 1)

    def run_try(self, operator: Any, *, max_deferrals: int = 40, until_deferral: int | None = None,
                on_defer: Callable[[Any], None] | None = None) -> TryOutcome:
        """Run one try to its end; exceptions are kept in the outcome, not raised.

        :param operator: the operator (a fresh object per try, as after a re-parse, or the same).
        :param max_deferrals: deferrals after which the try is an unbounded loop.
        :param until_deferral: leave the try parked at this deferral (a worker that died, or a
            try whose trigger is still waiting when the test has seen enough).
        :param on_defer: called with each rebuilt trigger before it runs.
        """
        ti = self.new_ti()
        outcome = TryOutcome(ti)
        self.tries.append(outcome)
        context = self.context(ti)
        call: Callable[[], Any] = lambda: operator.execute(context)  # noqa: E731
        while True:
            try:
                outcome.result = call()
                return outcome
            except TaskDeferred as deferred:
                trigger = rebuild(deferred.trigger)
                outcome.deferrals.append(trigger)
                if until_deferral is not None and len(outcome.deferrals) >= until_deferral:
                    outcome.parked = trigger
                    return outcome
                if len(outcome.deferrals) > max_deferrals:
                    outcome.error = UnboundedLoop(f"the try deferred {len(outcome.deferrals)} times")
                    return outcome
                if on_defer is not None:
                    on_defer(trigger)
                try:
                    event = asyncio.run(first_event(trigger))
                except Exception as e:  # the triggerer fails the task
                    outcome.error = TriggerFailed(f"{type(trigger).__name__} raised {type(e).__name__}: {e}")
                    outcome.error.__cause__ = e
                    return outcome
                method = getattr(operator, deferred.method_name)
                call = lambda method=method, event=event: method(context, event=event)  # noqa: E731
            except Exception as e:  # the try failed
                outcome.error = e
                return outcome

    def run_until_done(self, make_operator: Callable[[], Any], max_tries: int = 3, **kwargs: Any) -> TryOutcome:
        """Run tries (a fresh operator each, as after a re-parse) until one succeeds or ``max_tries``."""
        outcome = self.run_try(make_operator(), **kwargs)
        while not outcome.succeeded and len(self.tries) < max_tries:
            outcome = self.run_try(make_operator(), **kwargs)
        return outcome

    def ledger(self) -> dict[str, Any] | None:
        from airflow_spot_training.operators.spot_training import LEDGER_KEY

        return self.store.get(LEDGER_KEY)
