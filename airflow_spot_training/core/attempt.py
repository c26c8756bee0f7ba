"""The typed contract between backends, the trigger, the operator and the ledger.

One definition each, used by every layer:

* :class:`AttemptState`: what an attempt is doing or how it ended. Backends report it
  (:class:`AttemptStatus`), the ledger records it (``AttemptRecord.outcome``).
* :class:`AttemptHandle`: how to find one attempt again (an instance, a job, a local
  process). Each backend subclasses it with its own typed fields; it travels as a
  JSON-safe dict (ledger, trigger kwargs) and is rebuilt with :meth:`AttemptHandle.from_dict`.
* :class:`AttemptEvent`: the one event the trigger fires when it stops waiting, built
  in one place (:meth:`AttemptEvent.from_status`) and checked on arrival
  (:meth:`AttemptEvent.from_payload`).

Everything that is stored (ledger, handles, trigger kwargs, events) carries a ``version``.
A record without one is version 1 (written before versions existed) and still loads;
an unknown version is refused with :class:`UnknownVersionError`, which says what to do.

Pure: no Airflow, no cloud SDK.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, TypeVar

HANDLE_VERSION = 2
#: version 3: ``to_settle`` (a provisional end the worker settles); versions 1 and 2 still load
EVENT_VERSION = 3


class UnknownVersionError(ValueError):
    """A stored record was written by a newer (or foreign) version of the provider."""


def check_version(kind: str, data: Mapping[str, Any], supported: tuple[int, ...]) -> int:
    """The record's version (1 when it has none); raise :class:`UnknownVersionError` if unsupported."""
    version = data.get("version", 1)
    if version not in supported:
        raise UnknownVersionError(
            f"{kind} has version {version!r}, but this airflow-spot-training understands versions "
            f"{', '.join(map(str, supported))}. It was written by a newer provider: upgrade "
            "airflow-spot-training on every worker and triggerer, or clear the task to start a new ledger."
        )
    return int(version)


class AttemptState(str, enum.Enum):
    """Where one attempt stands. The values are the strings stored in ledgers and events."""

    LAUNCHING = "launching"  # recorded before launch() returned a handle
    PENDING = "pending"  # the backend accepted it; not running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    FAILED = "failed"
    CAPACITY_UNAVAILABLE = "capacity_unavailable"
    STOPPED = "stopped"  # stopped by us (task killed, moved back to spot) or from outside

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_live(self) -> bool:
        return self in LIVE_STATES

    def __str__(self) -> str:  # log lines and f-strings show the stored value
        return self.value


FINAL_STATES = frozenset({AttemptState.SUCCEEDED, AttemptState.PREEMPTED, AttemptState.FAILED,
                          AttemptState.CAPACITY_UNAVAILABLE, AttemptState.STOPPED})
LIVE_STATES = frozenset({AttemptState.LAUNCHING, AttemptState.PENDING, AttemptState.RUNNING})


def finite_or_none(value: Any) -> Any:
    """``value``, or ``None`` when it is a float that JSON cannot carry (NaN, infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class AttemptStatus:
    """What a backend says about an attempt.

    :param state: the attempt's state.
    :param reason: the cloud's own reason code, or a sentence, for the ledger and the log.
    :param preemptions: preemptions inside this attempt (a SageMaker job is interrupted and
        restarted in place, possibly several times; most backends report 0 or 1).
    :param started_at: epoch seconds when the training started running, if known.
    :param ended_at: epoch seconds when it ended, if it has.
    :param details: backend-specific JSON-safe facts (exit code, billable seconds, zone, price).
    :param to_settle: set on a final state that is still provisional: what the backend has left to
        read (its own word, e.g. ``"result"``) to know how the attempt ended. The triggerer fires
        on the provisional state at once; the worker settles it with ``SpotBackend.settle``.
        ``None`` when the status is settled.
    """

    state: AttemptState
    reason: str = ""
    preemptions: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    to_settle: str | None = None

    def __post_init__(self) -> None:
        self.state = AttemptState(self.state)

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptStatus:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


HandleT = TypeVar("HandleT", bound="AttemptHandle")


@dataclass(frozen=True, kw_only=True)
class AttemptHandle:
    """How to find one attempt again; each backend adds its own fields in a subclass.

    :param backend: the backend's ``kind`` (``local``, ``ec2``, ...).
    :param token: the attempt's idempotency token.
    :param attempt: the attempt number.
    :param capacity: ``spot`` or ``on_demand``.
    :param launched_at: epoch seconds of the launch.
    :param pool: where it runs, for people (``g5.xlarge@subnet-1``, a zone, ``local``).
    """

    backend: str
    token: str
    attempt: int
    capacity: str
    launched_at: float | None = None
    pool: str | None = None
    version: int = HANDLE_VERSION

    #: versions of the stored dict this class can read
    supported_versions: ClassVar[tuple[int, ...]] = (1, 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[HandleT], data: Mapping[str, Any] | AttemptHandle) -> HandleT:
        """Rebuild a handle from its stored dict (a handle of this class is returned as is).

        Keys this class does not know are dropped (a handle of version 1 carried a few); a
        missing required field is an error that names it.
        """
        if isinstance(data, cls):
            return data
        if isinstance(data, AttemptHandle):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise TypeError(f"an attempt handle must be a JSON object, got {type(data).__name__}")
        check_version(f"{cls.__name__} {data.get('token', '')}".strip(), data, cls.supported_versions)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["version"] = HANDLE_VERSION
        missing = [name for name, f in fields.items() if name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{cls.__name__} is missing {', '.join(missing)}: {dict(data)!r}")
        return cls(**values)


@dataclass(frozen=True)
class CheckpointInfo:
    """The newest committed checkpoint, as the trigger and operator see it."""

    step: int
    total_steps: int | None = None
    committed_at: float | None = None
    reason: str = "periodic"
    attempt: int | None = None
    token: str | None = None

    @property
    def is_final(self) -> bool:
        """The training's own last checkpoint: it said so, or it reached its planned last step."""
        return self.reason == "final" or (self.total_steps is not None and self.step >= self.total_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CheckpointInfo | None:
        if data is None:
            return None
        if not isinstance(data, Mapping) or not isinstance(data.get("step"), int):
            raise ValueError(f"a checkpoint description needs an integer step, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class EventKind(str, enum.Enum):
    """Why the trigger stopped waiting."""

    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    FAILED = "failed"
    CAPACITY_UNAVAILABLE = "capacity_unavailable"
    STOPPED = "stopped"
    #: preempted, but the backend restarts the attempt in place (SageMaker managed spot)
    INTERRUPTED = "interrupted"
    #: the policy wants this running on-demand attempt moved back to spot
    RETURN_TO_SPOT = "return_to_spot"
    #: the trigger could not tell how the attempt is doing (polling kept failing, or the
    #: trigger itself hit an error); the attempt may still run and must be re-attached or stopped
    LOST = "lost"

    @classmethod
    def of(cls, state: AttemptState) -> EventKind:
        return cls(state.value)

    @property
    def attempt_state(self) -> AttemptState | None:
        """The final state this event records, or ``None`` when the attempt is not over."""
        try:
            state = AttemptState(self.value)
        except ValueError:
            return None
        return state if state.is_final else None


@dataclass(frozen=True)
class AttemptEvent:
    """The payload of the one ``TriggerEvent`` a :class:`SpotTrainingTrigger` fires.

    :param kind: why the wait ended.
    :param attempt: the attempt number.
    :param token: the attempt's token (checked against the ledger's current attempt).
    :param reason: a sentence for the ledger and the log.
    :param started_at: epoch seconds when the attempt started running, if known.
    :param ended_at: epoch seconds when it ended, if it did.
    :param preemptions: preemptions inside this attempt.
    :param details: backend facts (exit code, billable seconds, ...).
    :param checkpoint: the newest committed checkpoint when the event fired.
    :param progress_step: the last step the training reported executing, if it reports progress.
    :param to_settle: the status's ``to_settle``: the end is provisional until the worker settles it.
    """

    kind: EventKind
    attempt: int
    token: str = ""
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    preemptions: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointInfo | None = None
    progress_step: int | None = None
    to_settle: str | None = None
    version: int = EVENT_VERSION

    @classmethod
    def from_status(cls, status: AttemptStatus, handle: AttemptHandle, *, kind: EventKind | None = None,
                    checkpoint: CheckpointInfo | None = None, progress_step: int | None = None,
                    reason: str | None = None) -> AttemptEvent:
        """The event for ``status`` of the attempt ``handle`` (the one place events are built)."""
        return cls(
            kind=kind or EventKind.of(status.state),
            attempt=handle.attempt,
            token=handle.token,
            reason=status.reason if reason is None else reason,
            started_at=status.started_at,
            ended_at=status.ended_at,
            preemptions=status.preemptions,
            details=dict(status.details),
            checkpoint=checkpoint,
            progress_step=progress_step,
            to_settle=status.to_settle,
        )

    def status(self) -> AttemptStatus:
        """The status this event of an ended attempt was built from (to settle it in the worker)."""
        state = self.kind.attempt_state
        if state is None:
            raise ValueError(f"a {self.kind.value!r} event does not end the attempt; it has no final status")
        return AttemptStatus(state=state, reason=self.reason, preemptions=self.preemptions,
                             started_at=self.started_at, ended_at=self.ended_at, details=dict(self.details),
                             to_settle=self.to_settle)

    def to_payload(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload["kind"] = self.kind.value
        payload["status"] = self.kind.value  # the version 1 name of the field, kept for readers of logs
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> AttemptEvent:
        """Check and rebuild an event; version 1 payloads (``status`` instead of ``kind``) load too."""
        if not isinstance(payload, Mapping):
            raise ValueError(f"a spot-training event must be a JSON object, got {payload!r}")
        check_version("a spot-training trigger event", payload, (1, 2, EVENT_VERSION))
        kind = payload.get("kind", payload.get("status"))
        if kind not in {k.value for k in EventKind} or not isinstance(payload.get("attempt"), int):
            raise ValueError(f"not a spot-training event (needs a known kind and an attempt number): {payload!r}")
        return cls(
            kind=EventKind(kind),
            attempt=payload["attempt"],
            token=str(payload.get("token") or ""),
            reason=str(payload.get("reason") or ""),
            started_at=payload.get("started_at"),
            ended_at=payload.get("ended_at"),
            preemptions=int(payload.get("preemptions") or 0),
            details=dict(payload.get("details") or {}),
            checkpoint=CheckpointInfo.from_dict(payload.get("checkpoint")),
            progress_step=payload.get("progress_step"),
            to_settle=payload.get("to_settle"),
        )
