"""Uniform Progress, after Wu et al., "Can't Be Late", NSDI 2024."""

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
from airflow_spot_training.core.policies.slack import fmt, spot_looks_available


@dataclass
class UniformProgressPolicy:
    """Keep progress at or above the straight line from (start, 0) to (deadline, total work).

    The four published rules, with ``d`` the restart overhead:

    1. *Uniform progress*: when no instance runs and progress is behind the line, run on
       on-demand to catch up.
    2. *Exploitation*: use spot whenever it is available, even when behind; stay on a
       running spot instance until it is preempted.
    3. *Hysteresis*: on on-demand, stay there until progress reaches the line's value at
       ``now + hysteresis_restarts * d``; then spot if available, else stop and wait.
    4. *Safety net*: once the time left is below the remaining work plus
       ``safety_restarts * d``, on-demand to the end.

    For our discrete setting the safety net also counts the work since the last checkpoint
    and one polling period, so that no preemption between two polls can cause a miss.

    Rule 3 may answer :attr:`Action.WAIT` to a TICK on on-demand: stop (after a
    checkpoint) and wait, as in the paper. Needs ``JobState.total_work``; without it the
    line is unknown and the policy keeps only rules 2 and 4.

    :param hysteresis_restarts: look-ahead of rule 3, in restart overheads.
    :param safety_restarts: size of the safety net, in restart overheads.
    :param wait_seconds: how long to wait before asking again.
    """

    hysteresis_restarts: float = 2.0
    safety_restarts: float = 2.0
    wait_seconds: float = 60.0
    name: str = field(default="uniform_progress", init=False)

    def __post_init__(self) -> None:
        if self.wait_seconds <= 0:
            raise ValueError(f"wait_seconds must be positive (got {self.wait_seconds}).")
        if self.hysteresis_restarts < 0 or self.safety_restarts < 1:
            raise ValueError(
                "hysteresis_restarts must be 0 or more and safety_restarts at least 1 "
                f"(got {self.hysteresis_restarts}, {self.safety_restarts})."
            )

    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "hysteresis_restarts": self.hysteresis_restarts,
            "safety_restarts": self.safety_restarts,
            "wait_seconds": self.wait_seconds,
        }

    def _expected_progress(self, state: JobState, at: float) -> float | None:
        if state.total_work is None or state.deadline is None:
            return None
        window = state.deadline - state.started_at
        if window <= 0:
            return state.total_work
        return state.total_work * min(1.0, max(0.0, (at - state.started_at) / window))

    def decide(self, state: JobState) -> Decision:
        left, remaining = state.time_left, state.remaining_work
        if left is None or remaining is None:
            reason = deadline_escalation_reason(state)
            if reason:
                return Decision(Action.ON_DEMAND, reason)
            if spot_looks_available(state) or state.current_capacity is Capacity.SPOT:
                return Decision(Action.SPOT, "uniform progress: no deadline to track; spot")
            return Decision(Action.WAIT, "uniform progress: no deadline to track; waiting for spot",
                            self.wait_seconds)
        d = state.restart_overhead
        net = remaining + self.safety_restarts * d + state.checkpoint_interval + state.poll_interval
        on_spot = state.event is Event.TICK and state.current_capacity is Capacity.SPOT
        on_demand = state.current_capacity is Capacity.ON_DEMAND and state.event in (Event.TICK, Event.FAILED)
        if left < net:
            return Decision(Action.ON_DEMAND, f"uniform progress safety net: {fmt(left)} left < {fmt(net)}")
        if on_spot:
            return Decision(Action.SPOT, "uniform progress: stay on spot until it is preempted")
        done = (state.total_work - remaining) if state.total_work is not None else None
        line_now = self._expected_progress(state, state.now)
        spot = spot_looks_available(state)
        if on_demand:
            line_ahead = self._expected_progress(state, state.now + self.hysteresis_restarts * d)
            if done is not None and line_ahead is not None and done < line_ahead:
                return Decision(Action.ON_DEMAND, "uniform progress hysteresis: stay on on-demand")
            if spot:
                return Decision(Action.SPOT, "uniform progress: ahead of the line and spot is back")
            return Decision(Action.WAIT, "uniform progress: ahead of the line; stop and wait for spot",
                            self.wait_seconds)
        if spot:
            return Decision(Action.SPOT, "uniform progress: spot available")
        if done is not None and line_now is not None and done < line_now:
            return Decision(
                Action.ON_DEMAND,
                f"uniform progress: {fmt(done)} done < {fmt(line_now)} on the line; on-demand to catch up",
            )
        return Decision(Action.WAIT, "uniform progress: on or ahead of the line; waiting for spot",
                        self.wait_seconds)
