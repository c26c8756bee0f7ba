"""The backend interface: what launches an attempt, watches it, and stops it.

One module per backend (``local``, ``ec2``, ``sagemaker``, ``compute_engine``,
``vertex_ai``), each a :class:`SpotBackend` subclass. A backend is configuration
only: it is built in the DAG file, validated at parse time, handed to the trigger
as ``serialize()`` output, and rebuilt there. It keeps no per-run state of its own;
everything about an attempt lives in the JSON-safe handle that ``launch`` returns.

Who calls what:

* the worker (sync): :meth:`validate`, :meth:`launch`, :meth:`describe`, :meth:`stop`;
* the triggerer (async, never blocking the event loop): :meth:`poll`, :meth:`astop`.

Idempotency is the backend's duty: ``launch`` with the same ``request.token``
must return the attempt already started under that token instead of starting a
second one. That is what lets a retry after a worker crash re-attach.
"""

from __future__ import annotations

import asyncio
import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity

# Attempt states a backend reports.
PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
PREEMPTED = "preempted"
FAILED = "failed"
CAPACITY_UNAVAILABLE = "capacity_unavailable"
STOPPED = "stopped"
FINAL_STATES = frozenset({SUCCEEDED, PREEMPTED, FAILED, CAPACITY_UNAVAILABLE, STOPPED})


class BackendConfigError(ValueError):
    """A backend was configured wrongly; the message names the argument and the fix."""


class SpotCapacityUnavailable(RuntimeError):
    """No spot capacity in any pool right now. The policy decides: wait or escalate."""

    def __init__(self, message: str, pools_tried: list[str] | None = None) -> None:
        super().__init__(message)
        self.pools_tried = pools_tried or []


class CloudActionRequired(RuntimeError):
    """A cloud error the user must act on (a quota to raise, a permission to grant)."""


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one attempt.

    :param contract: the environment contract handed to the training.
    :param capacity: spot or on-demand.
    :param token: the attempt's idempotency token (stable for this attempt number).
    :param labels: identifiers to tag cloud resources with (dag_id, run_id, task_id, map_index, attempt).
    """

    contract: Contract
    capacity: Capacity
    token: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def attempt(self) -> int:
        return self.contract.attempt


@dataclass
class AttemptStatus:
    """What a backend says about an attempt.

    :param state: one of ``pending``, ``running``, ``succeeded``, ``preempted``,
        ``failed``, ``capacity_unavailable``, ``stopped``.
    :param reason: a cloud's own reason code or a sentence, for the ledger and the log.
    :param preemptions: preemptions inside this attempt (a SageMaker job can be
        interrupted and restarted by SageMaker several times; most backends report 0 or 1).
    :param started_at: epoch seconds when the training started running, if known.
    :param ended_at: epoch seconds when it ended, if it has.
    :param details: backend-specific JSON-safe facts (exit code, billable seconds, pool, price).
    """

    state: str
    reason: str = ""
    preemptions: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptStatus:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class SpotBackend(ABC):
    """Base class of every backend. Subclasses are plain configuration objects.

    Subclasses set :attr:`kind`, implement the abstract methods, and return their
    constructor arguments (JSON-safe) from :meth:`serialize_kwargs`.
    """

    kind: ClassVar[str] = "abstract"
    #: seconds a launch typically costs before useful work starts (boot + restore);
    #: the default for the operator's ``restart_overhead``.
    default_restart_overhead: ClassVar[float] = 60.0

    # -- configuration ---------------------------------------------------------------
    @abstractmethod
    def serialize_kwargs(self) -> dict[str, Any]:
        """JSON-safe constructor arguments that rebuild this backend."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}", self.serialize_kwargs()

    @staticmethod
    def deserialize(classpath: str, kwargs: dict[str, Any]) -> SpotBackend:
        module_name, _, name = classpath.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
        if not (isinstance(cls, type) and issubclass(cls, SpotBackend)):
            raise BackendConfigError(f"{classpath} is not a SpotBackend")
        return cls(**kwargs)

    def validate(self) -> None:
        """Check the configuration at DAG parse time; raise :class:`BackendConfigError`."""

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for reading the checkpoint prefix from the worker and triggerer."""
        return {}

    # -- worker side (sync) ------------------------------------------------------------
    @abstractmethod
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        """Start the attempt (idempotent on ``request.token``) and return its JSON-safe handle.

        Raise :class:`SpotCapacityUnavailable` when spot capacity cannot be had in any
        pool, :class:`CloudActionRequired` for quota and permission errors.
        """

    @abstractmethod
    def describe(self, handle: dict[str, Any]) -> AttemptStatus:
        """The attempt's current status (sync; used before deferring and in blocking mode)."""

    @abstractmethod
    def stop(self, handle: dict[str, Any]) -> None:
        """Stop the attempt and release its capacity. Safe to call on a finished attempt."""

    def find(self, request: LaunchRequest) -> dict[str, Any] | None:
        """The handle of an attempt already started for ``request.token``, if any.

        Backends whose ``launch`` is idempotent by itself may keep the default.
        """
        return None

    def price_per_hour(self, handle: dict[str, Any], capacity: Capacity) -> float | None:
        """The price of the capacity an attempt runs on, when the backend knows it."""
        return None

    def spot_available(self, handle: dict[str, Any]) -> bool | None:
        """Whether a spot launch would likely succeed now; ``None`` when the backend cannot tell.

        Asked while the on-demand attempt ``handle`` runs, for policies that move back to spot.
        """
        return None

    # -- triggerer side (async) --------------------------------------------------------
    async def aspot_available(self, handle: dict[str, Any]) -> bool | None:
        return await asyncio.to_thread(self.spot_available, handle)

    async def poll(self, handle: dict[str, Any]) -> AttemptStatus:
        """The attempt's status, without blocking the event loop.

        The default runs :meth:`describe` in a thread; backends with async clients
        override it.
        """
        return await asyncio.to_thread(self.describe, handle)

    async def astop(self, handle: dict[str, Any]) -> None:
        await asyncio.to_thread(self.stop, handle)


def resolve_backend(value: Any) -> SpotBackend:
    """Accept a backend instance, or a name with defaults (``"local"``); anything else is an error."""
    if isinstance(value, SpotBackend):
        return value
    from airflow_spot_training.backends import BACKENDS

    if isinstance(value, str) and value in BACKENDS:
        module_name, _, name = BACKENDS[value].rpartition(".")
        return getattr(importlib.import_module(module_name), name)()
    known = ", ".join(sorted(BACKENDS))
    raise BackendConfigError(
        f"backend={value!r} is not a backend. Pass a backend object such as "
        f"LocalBackend(command=[...]) or one of the names: {known}."
    )
