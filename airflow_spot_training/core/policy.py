"""Escalation policies: decide where the next attempt of a training job runs.

This module is pure: it imports neither Airflow nor a cloud SDK, so the operator,
the trace simulator and users' own code drive exactly the same objects.

A policy is any object with a ``decide(state: JobState) -> Decision`` method. It is
asked at every event of a run: before the first launch, after a preemption, after a
genuine failure that Airflow retries, when spot capacity was unavailable, and (for
policies that move back from on-demand to spot) at every poll while an on-demand
attempt runs. It answers spot, on-demand or wait, with a reason a person can read.

Policies that the operator must hand to a trigger are rebuilt from
``serialize()``: a classpath plus JSON-safe keyword arguments.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Capacity(str, enum.Enum):
    """Kind of capacity an attempt runs on."""

    SPOT = "spot"
    ON_DEMAND = "on_demand"


class Action(str, enum.Enum):
    """What a policy wants to happen next."""

    SPOT = "spot"
    ON_DEMAND = "on_demand"
    WAIT = "wait"

    @property
    def capacity(self) -> Capacity | None:
        return {Action.SPOT: Capacity.SPOT, Action.ON_DEMAND: Capacity.ON_DEMAND}.get(self)


class Event(str, enum.Enum):
    """Why a policy is being asked."""

    START = "start"  # before the first launch
    PREEMPTED = "preempted"  # the last attempt was reclaimed
    FAILED = "failed"  # a genuine failure; Airflow retried the task
    CAPACITY_UNAVAILABLE = "capacity_unavailable"  # spot could not be had just now
    WAITED = "waited"  # the wait a policy asked for is over: spot may be back
    TICK = "tick"  # periodic check while an attempt runs (for move-back-to-spot)


@dataclass(frozen=True)
class JobState:
    """Everything a policy may look at. All times are seconds; instants are epoch seconds.

    :param now: the current instant.
    :param started_at: instant of the first launch (``now`` before it).
    :param deadline: instant by which the job must be done, or ``None``.
    :param attempts: attempts launched so far.
    :param preemptions: preemptions counted so far, across attempts and Airflow tries.
    :param event: why the policy is asked.
    :param current_capacity: capacity of the attempt that just ended or is running.
    :param progress: fraction of the work done (0..1) when known.
    :param remaining_work: estimated seconds of compute still needed when known.
    :param restart_overhead: seconds a launch costs before useful work starts
        (boot plus checkpoint restore).
    :param checkpoint_interval: seconds of work between checkpoints (work lost at a
        preemption is at most this; 0 means continuous checkpointing).
    :param spot_unavailable: spot capacity was unavailable at the last try.
    :param spot_wait: seconds spent so far waiting for spot capacity.
    :param spot_available: for simulators and clouds that can tell: is spot available now.
    :param spot_available_for: seconds spot has been seen available without a break, up to
        ``now`` (0 at the first sighting); ``None`` when the caller does not track it. Policies
        that move back to spot use it as hysteresis: spot that has just come back is often
        gone again within minutes.
    :param total_work: seconds of compute the whole job needs (its expected runtime), when
        known. Deadline-aware policies use it to place the start-to-deadline progress line;
        without it they fall back to rules that only look at the remaining work.
    :param poll_interval: seconds until the policy is asked again at the latest (the
        caller's polling period). Deadline-aware policies keep this much extra margin so that
        a decision taken now is still safe when the next one comes; 0 means "asked
        continuously".
    """

    now: float
    started_at: float
    deadline: float | None = None
    attempts: int = 0
    preemptions: int = 0
    event: Event = Event.START
    current_capacity: Capacity | None = None
    progress: float | None = None
    remaining_work: float | None = None
    restart_overhead: float = 0.0
    checkpoint_interval: float = 0.0
    spot_unavailable: bool = False
    spot_wait: float = 0.0
    spot_available: bool | None = None
    spot_available_for: float | None = None
    total_work: float | None = None
    poll_interval: float = 0.0

    @property
    def elapsed(self) -> float:
        return max(0.0, self.now - self.started_at)

    @property
    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.now

    @property
    def slack(self) -> float | None:
        """Seconds to spare if the rest ran on on-demand from a fresh launch now."""
        if self.deadline is None or self.remaining_work is None:
            return None
        return self.deadline - self.now - self.remaining_work - self.restart_overhead


@dataclass(frozen=True)
class Decision:
    """A policy's answer: where the next attempt runs, and why."""

    action: Action
    reason: str
    wait_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "wait_seconds": self.wait_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(Action(data["action"]), data["reason"], float(data.get("wait_seconds", 0.0)))


@runtime_checkable
class EscalationPolicy(Protocol):
    """The interface every policy implements."""

    def decide(self, state: JobState) -> Decision: ...


def serialize_policy(policy: EscalationPolicy) -> tuple[str, dict[str, Any]]:
    """Return ``(classpath, kwargs)`` for a policy; it must define ``serialize_kwargs()``."""
    kwargs_of = getattr(policy, "serialize_kwargs", None)
    if kwargs_of is None:
        raise TypeError(
            f"escalation_policy {type(policy).__qualname__} cannot be handed to a trigger: "
            "give it a serialize_kwargs() method returning its JSON-safe constructor arguments."
        )
    cls = type(policy)
    return f"{cls.__module__}.{cls.__qualname__}", kwargs_of()


def deserialize_policy(classpath: str, kwargs: dict[str, Any]) -> EscalationPolicy:
    module_name, _, name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls(**kwargs)


def format_duration(seconds: float) -> str:
    """A duration for people: seconds, minutes or hours."""
    seconds = float(seconds)
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.1f} h"
    if abs(seconds) >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


@dataclass
class ThresholdPolicy:
    """The mission's rule: spot until ``max_preemptions`` preemptions, or until the time
    left can no longer absorb one more preemption plus restart; then on-demand.

    Once on on-demand it stays there. While spot capacity is unavailable it waits
    (polling every ``wait_seconds``) as long as the deadline allows.

    :param max_preemptions: preemptions after which the next attempt runs on on-demand.
        ``None`` means no threshold (only the deadline escalates).
    :param wait_seconds: how long to wait before asking again for spot capacity.
    """

    max_preemptions: int | None = 3
    wait_seconds: float = 60.0
    name: str = field(default="threshold", init=False)

    def __post_init__(self) -> None:
        if self.max_preemptions is not None and self.max_preemptions < 0:
            raise ValueError(
                f"max_preemptions must be 0 or more (got {self.max_preemptions}); "
                "use 0 to run on on-demand from the start, or None for no threshold."
            )
        if self.wait_seconds <= 0:
            raise ValueError(f"wait_seconds must be positive (got {self.wait_seconds}).")

    def serialize_kwargs(self) -> dict[str, Any]:
        return {"max_preemptions": self.max_preemptions, "wait_seconds": self.wait_seconds}

    def decide(self, state: JobState) -> Decision:
        if state.current_capacity is Capacity.ON_DEMAND and state.event is not Event.START:
            return Decision(Action.ON_DEMAND, "already escalated to on-demand; staying there")
        if self.max_preemptions is not None and state.preemptions >= self.max_preemptions:
            return Decision(
                Action.ON_DEMAND,
                f"{state.preemptions} preemption(s) reached the threshold max_preemptions={self.max_preemptions}",
            )
        deadline_reason = deadline_escalation_reason(state)
        if deadline_reason:
            return Decision(Action.ON_DEMAND, deadline_reason)
        if state.event is Event.CAPACITY_UNAVAILABLE or state.spot_unavailable:
            wait = self.wait_seconds
            left = state.time_left
            if left is not None and state.remaining_work is not None:
                # never wait past the point where on-demand must start
                room = state.slack - _preemption_cost(state)  # type: ignore[operator]
                wait = max(0.0, min(wait, room))
            return Decision(Action.WAIT, f"spot capacity unavailable; waiting {format_duration(wait)} for it", wait)
        return Decision(Action.SPOT, "spot: time left can absorb another preemption")


def _preemption_cost(state: JobState) -> float:
    """Seconds one more preemption costs: a restart plus the work since the last checkpoint,
    plus one polling period (``JobState.poll_interval``, 0 by default) for the delay before
    the policy is asked again."""
    return state.restart_overhead + state.checkpoint_interval + state.poll_interval


def deadline_escalation_reason(state: JobState) -> str | None:
    """Why the deadline forces on-demand now, or ``None`` if spot is still safe.

    Spot is safe while the time left covers the remaining work on a fresh on-demand
    launch plus the cost of one more preemption (restart overhead plus lost work).
    When the remaining work is unknown, the deadline only bites once the time left
    is smaller than two restarts.
    """
    left = state.time_left
    if left is None:
        return None
    if state.remaining_work is None:
        if left <= 2 * state.restart_overhead:
            return (
                f"deadline in {format_duration(left)}: no room for another restart "
                f"(restart overhead {format_duration(state.restart_overhead)})"
            )
        return None
    needed = state.remaining_work + state.restart_overhead + _preemption_cost(state)
    if left < needed:
        return (
            f"deadline in {format_duration(left)} cannot absorb another preemption: "
            f"{format_duration(state.remaining_work)} of work left + {format_duration(state.restart_overhead)} restart "
            f"+ {format_duration(_preemption_cost(state))} for one more preemption = {format_duration(needed)}"
        )
    return None


def check_feasible(total_work: float, deadline_seconds: float, restart_overhead: float = 0.0) -> None:
    """Raise ``ValueError`` up front when a deadline cannot be met even on on-demand.

    The fastest possible run is one on-demand launch: ``restart_overhead`` plus
    ``total_work``. A deadline shorter than that is a configuration error, better reported
    before anything is launched than discovered as a silent miss.

    :param total_work: seconds of compute the job needs.
    :param deadline_seconds: seconds from the first launch to the deadline.
    :param restart_overhead: seconds one launch costs before useful work starts.
    """
    if total_work < 0 or restart_overhead < 0:
        raise ValueError(
            f"total_work ({total_work} s) and restart_overhead ({restart_overhead} s) must be 0 or more."
        )
    needed = total_work + restart_overhead
    if deadline_seconds < needed:
        raise ValueError(
            f"infeasible deadline: {format_duration(deadline_seconds)} ({deadline_seconds:.0f} s) is shorter than "
            f"{format_duration(total_work)} of work + {format_duration(restart_overhead)} restart overhead = {format_duration(needed)} "
            f"({needed:.0f} s), even on on-demand from the start. Move the deadline out by at least "
            f"{format_duration(needed - deadline_seconds)} or shorten the job."
        )


def estimate_remaining_work(
    progress: float | None, compute_seconds: float, expected_runtime: float | None
) -> float | None:
    """Estimate seconds of compute left, erring on the side of more.

    Two estimates, the larger wins: from the rate so far (compute spent per unit of
    committed progress, which includes restarts and lost work), and from
    ``expected_runtime`` scaled by the progress not yet committed. Without progress
    reports, compute already spent is not subtracted: attempts preempted before
    their first checkpoint kept nothing. Unknown when neither is available.
    """
    estimates = []
    if progress is not None and progress > 0 and compute_seconds > 0:
        p = min(progress, 1.0)
        estimates.append(compute_seconds * (1.0 - p) / p)
    if expected_runtime is not None:
        estimates.append(expected_runtime * (1.0 - min(progress or 0.0, 1.0)))
    return max(estimates) if estimates else None
