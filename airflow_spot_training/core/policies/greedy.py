"""Greedy: spot whenever it is available, on-demand only once the slack is gone."""

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
from airflow_spot_training.core.policies.slack import fmt, safety_margin, spot_looks_available


@dataclass
class GreedyPolicy:
    """Use spot whenever it is available and wait for it when it is not, until the slack
    is down to one more preemption plus one polling period; then on-demand to the end.

    It spends all of the slack on waiting for spot as early as it can, so a long outage
    early in the run leaves it on on-demand for the rest of the job. It never moves back
    from on-demand to spot.

    :param wait_seconds: how long to wait before asking again for spot capacity.
    """

    wait_seconds: float = 60.0
    name: str = field(default="greedy", init=False)

    def __post_init__(self) -> None:
        if self.wait_seconds <= 0:
            raise ValueError(f"wait_seconds must be positive (got {self.wait_seconds}).")

    def serialize_kwargs(self) -> dict[str, Any]:
        return {"wait_seconds": self.wait_seconds}

    def decide(self, state: JobState) -> Decision:
        if state.current_capacity is Capacity.ON_DEMAND and state.event is not Event.START:
            return Decision(Action.ON_DEMAND, "greedy: on on-demand; it stays there to the end")
        slack = state.slack
        if slack is None:
            reason = deadline_escalation_reason(state)
            if reason:
                return Decision(Action.ON_DEMAND, reason)
            slack = float("inf")
        margin = safety_margin(state)
        if slack < margin:
            return Decision(
                Action.ON_DEMAND,
                f"greedy: slack {fmt(slack)} is below one more preemption + poll ({fmt(margin)})",
            )
        if state.event is Event.TICK and state.current_capacity is Capacity.SPOT:
            return Decision(Action.SPOT, "greedy: spot is running; keep it")
        if spot_looks_available(state):
            return Decision(Action.SPOT, f"greedy: spot available, slack {fmt(slack)}")
        wait = max(0.0, min(self.wait_seconds, slack - margin))
        return Decision(Action.WAIT, f"greedy: no spot; waiting {fmt(wait)} (slack {fmt(slack)})", wait)
