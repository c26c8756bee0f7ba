"""The default policy: spend the slack on spot, keep a reserve that shrinks toward the deadline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Decision,
    Event,
    JobState,
    deadline_escalation_reason,
)
from airflow_spot_training.core.policies.slack import (
    fmt,
    initial_slack,
    safety_margin,
    spot_looks_available,
)


@dataclass
class DeadlineAwarePolicy:
    """Cheapest-without-missing default.

    Let *slack* be the time to spare if the rest ran on on-demand from a fresh launch now,
    and *margin* one more preemption plus one poll (restart overhead + checkpoint
    interval + poll interval). The rules, first match wins:

    1. slack below the margin: on-demand (the only safe move).
    2. a spot instance is running: keep it (its slack does not shrink while it works).
    3. on on-demand and spot is known to be available: move back to spot if the slack
       still covers the margin after paying one more restart plus
       ``move_back_restarts`` restarts of cushion; otherwise stay.
    4. no instance and spot available: spot.
    5. no instance and no spot: wait while the slack is above the *reserve*, else
       on-demand. The reserve is ``margin + reserve_fraction * initial slack * time
       left / deadline window``: it shrinks linearly to the margin at the deadline, so
       the slack is spent on waiting early only as far as later outages can still be
       absorbed. ``reserve_fraction = 1`` is the Uniform Progress line; ``0`` is greedy.

    On on-demand it never stops to wait (a TICK on on-demand answers on-demand or spot),
    so it needs no operator support beyond the move back to spot.

    :param reserve_fraction: share of the initial slack held back, shrinking linearly
        to zero at the deadline. Needs ``JobState.total_work``; without it the reserve is
        just the margin (greedy waiting, but with moves back to spot).
    :param move_back_restarts: extra cushion, in restart overheads, required before
        leaving on-demand for spot.
    :param wait_seconds: how long to wait before asking again for spot capacity.
    """

    reserve_fraction: float = 0.8
    move_back_restarts: float = 0.5
    wait_seconds: float = 60.0
    name: str = field(default="deadline_aware", init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.reserve_fraction <= 1.0:
            raise ValueError(f"reserve_fraction must be within 0..1 (got {self.reserve_fraction}).")
        if self.move_back_restarts < 0:
            raise ValueError(f"move_back_restarts must be 0 or more (got {self.move_back_restarts}).")
        if self.wait_seconds <= 0:
            raise ValueError(f"wait_seconds must be positive (got {self.wait_seconds}).")

    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "reserve_fraction": self.reserve_fraction,
            "move_back_restarts": self.move_back_restarts,
            "wait_seconds": self.wait_seconds,
        }

    def reserve(self, state: JobState) -> float:
        """Slack to keep in hand before waiting for spot (seconds)."""
        margin = safety_margin(state)
        start_slack = initial_slack(state)
        if start_slack is None or state.deadline is None or start_slack <= 0:
            return margin
        window = state.deadline - state.started_at
        share = min(1.0, max(0.0, (state.deadline - state.now) / window)) if window > 0 else 0.0
        return margin + self.reserve_fraction * start_slack * share

    def decide(self, state: JobState) -> Decision:
        slack = state.slack
        on_spot = state.event is Event.TICK and state.current_capacity is Capacity.SPOT
        on_demand = state.current_capacity is Capacity.ON_DEMAND and state.event in (Event.TICK, Event.FAILED)
        if slack is None:
            reason = deadline_escalation_reason(state)
            if reason:
                return Decision(Action.ON_DEMAND, reason)
            if on_spot or spot_looks_available(state):
                return Decision(Action.SPOT, "no deadline or remaining work known; spot")
            if on_demand:
                return Decision(Action.ON_DEMAND, "no deadline or remaining work known; stay on on-demand")
            return Decision(Action.WAIT, "no deadline or remaining work known; waiting for spot",
                            self.wait_seconds)
        margin = safety_margin(state)
        if slack < margin:
            return Decision(
                Action.ON_DEMAND,
                f"slack {fmt(slack)} is below one more preemption + poll ({fmt(margin)}); on-demand",
            )
        if on_spot:
            return Decision(Action.SPOT, f"spot is running; keep it (slack {fmt(slack)})")
        if on_demand:
            needed = margin + (1.0 + self.move_back_restarts) * state.restart_overhead
            if state.spot_available and slack >= needed:
                return Decision(
                    Action.SPOT,
                    f"spot is back and slack {fmt(slack)} covers a move plus a preemption ({fmt(needed)})",
                )
            return Decision(Action.ON_DEMAND, f"stay on on-demand (slack {fmt(slack)})")
        if spot_looks_available(state):
            return Decision(Action.SPOT, f"spot available; slack {fmt(slack)}")
        reserve = self.reserve(state)
        if slack >= reserve:
            wait = max(0.0, min(self.wait_seconds, slack - reserve))
            return Decision(
                Action.WAIT,
                f"no spot; slack {fmt(slack)} is above the reserve {fmt(reserve)}; waiting {fmt(wait)}",
                wait,
            )
        return Decision(
            Action.ON_DEMAND,
            f"no spot and slack {fmt(slack)} is down to the reserve {fmt(reserve)}; on-demand",
        )
