"""The deadline-aware policy: spend the slack on spot, keep a reserve for the outages still to come."""

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
    """The cheapest policy that never misses: the default when a deadline and an expected
    runtime are given.

    Let *slack* be the time to spare if the rest ran on on-demand from a fresh launch now,
    and *margin* one more preemption plus one poll (restart overhead + checkpoint
    interval + poll interval). The rules, first match wins:

    1. ``max_preemptions`` preemptions reached (when set): on-demand to the end.
    2. slack below the margin: on-demand (the only safe move).
    3. a spot instance is running: keep it (its slack does not shrink while it works).
    4. on on-demand: move back to spot once spot has been seen available for
       ``move_back_after`` seconds and the slack still covers the margin after one more
       restart plus ``move_back_restarts`` restarts of cushion; otherwise stay. It never
       stops on-demand just to wait.
    5. no instance and spot available: spot.
    6. no instance and no spot: wait while the slack is above the *reserve*, else
       on-demand. The reserve is ``margin + time left * rate``: a straight line down to the
       margin at the deadline. Its ``rate`` (hours of slack held back per hour left) is the
       Uniform Progress line's, ``initial slack / deadline window`` times
       ``reserve_fraction``, but at most ``reserve_per_hour_left``: with a tight deadline
       it guards the progress line, with a loose one it waits like greedy until the slack
       is down to what the outages of the remaining hours need.

    :param reserve_per_hour_left: most slack held back per hour left to the deadline
        (seconds per second); 0 waits like greedy.
    :param reserve_fraction: share of the Uniform Progress line the reserve follows while
        that line is below ``reserve_per_hour_left`` (1: the line itself). Needs
        ``JobState.total_work``; without it the rate is ``reserve_per_hour_left``.
    :param move_back_restarts: extra cushion, in restart overheads, required before
        leaving on-demand for spot.
    :param move_back_after: seconds spot must have been seen available before an
        on-demand attempt moves back (``JobState.spot_available_for``; not checked when the
        caller does not track it).
    :param max_preemptions: after this many preemptions, on-demand to the end; ``None``
        lets the deadline alone decide.
    :param wait_seconds: how long to wait before asking again for spot capacity.
    """

    reserve_per_hour_left: float = 0.15
    reserve_fraction: float = 1.0
    move_back_restarts: float = 0.0
    move_back_after: float = 1200.0
    max_preemptions: int | None = None
    wait_seconds: float = 60.0
    name: str = field(default="deadline_aware", init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.reserve_fraction <= 1.0:
            raise ValueError(f"reserve_fraction must be within 0..1 (got {self.reserve_fraction}).")
        if self.reserve_per_hour_left < 0:
            raise ValueError(f"reserve_per_hour_left must be 0 or more (got {self.reserve_per_hour_left}).")
        if self.move_back_restarts < 0 or self.move_back_after < 0:
            raise ValueError(
                "move_back_restarts and move_back_after must be 0 or more "
                f"(got {self.move_back_restarts}, {self.move_back_after})."
            )
        if self.max_preemptions is not None and self.max_preemptions < 0:
            raise ValueError(f"max_preemptions must be 0 or more, or None (got {self.max_preemptions}).")
        if self.wait_seconds <= 0:
            raise ValueError(f"wait_seconds must be positive (got {self.wait_seconds}).")

    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "reserve_per_hour_left": self.reserve_per_hour_left,
            "reserve_fraction": self.reserve_fraction,
            "move_back_restarts": self.move_back_restarts,
            "move_back_after": self.move_back_after,
            "max_preemptions": self.max_preemptions,
            "wait_seconds": self.wait_seconds,
        }

    def reserve_rate(self, state: JobState) -> float:
        """Seconds of slack held back per second left to the deadline."""
        start_slack = initial_slack(state)
        if start_slack is None or state.deadline is None:
            return self.reserve_per_hour_left
        window = state.deadline - state.started_at
        line = self.reserve_fraction * max(0.0, start_slack) / window if window > 0 else 0.0
        return min(line, self.reserve_per_hour_left)

    def reserve(self, state: JobState) -> float:
        """Slack to keep in hand before waiting for spot (seconds)."""
        left = max(0.0, state.time_left or 0.0)
        return safety_margin(state) + left * self.reserve_rate(state)

    def decide(self, state: JobState) -> Decision:
        if self.max_preemptions is not None and state.preemptions >= self.max_preemptions:
            return Decision(
                Action.ON_DEMAND,
                f"{state.preemptions} preemption(s) reached max_preemptions={self.max_preemptions}; on-demand",
            )
        slack = state.slack
        if slack is None:
            return self._without_slack(state)
        margin = safety_margin(state)
        if slack < margin:
            return Decision(
                Action.ON_DEMAND,
                f"slack {fmt(slack)} is below one more preemption + poll ({fmt(margin)}); on-demand",
            )
        if state.event is Event.TICK and state.current_capacity is Capacity.SPOT:
            return Decision(Action.SPOT, f"spot is running; keep it (slack {fmt(slack)})")
        if state.current_capacity is Capacity.ON_DEMAND and state.event in (Event.TICK, Event.FAILED):
            return self._on_demand(state, slack, margin)
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

    def _on_demand(self, state: JobState, slack: float, margin: float) -> Decision:
        """An on-demand attempt runs: move back to spot, or stay."""
        needed = margin + (1.0 + self.move_back_restarts) * state.restart_overhead
        seen_for = state.spot_available_for
        if not state.spot_available:
            return Decision(Action.ON_DEMAND, f"stay on on-demand (slack {fmt(slack)}, no spot known)")
        if seen_for is not None and seen_for < self.move_back_after:
            return Decision(
                Action.ON_DEMAND,
                f"spot back for {fmt(seen_for)} only (moving after {fmt(self.move_back_after)}); stay on on-demand",
            )
        if slack < needed:
            return Decision(
                Action.ON_DEMAND,
                f"spot is back but slack {fmt(slack)} does not cover a move plus a preemption ({fmt(needed)})",
            )
        return Decision(
            Action.SPOT,
            f"spot is back and slack {fmt(slack)} covers a move plus a preemption ({fmt(needed)})",
        )

    def _without_slack(self, state: JobState) -> Decision:
        """No deadline or no estimate of the work left: the threshold-free fallback."""
        reason = deadline_escalation_reason(state)
        if reason:
            return Decision(Action.ON_DEMAND, reason)
        if state.event is Event.TICK and state.current_capacity is Capacity.SPOT:
            return Decision(Action.SPOT, "no deadline or remaining work known; keep the running spot instance")
        if state.current_capacity is Capacity.ON_DEMAND and state.event in (Event.TICK, Event.FAILED):
            return Decision(Action.ON_DEMAND, "no deadline or remaining work known; stay on on-demand")
        if spot_looks_available(state):
            return Decision(Action.SPOT, "no deadline or remaining work known; spot")
        return Decision(Action.WAIT, "no deadline or remaining work known; waiting for spot", self.wait_seconds)
