"""Deadline arithmetic shared by the deadline-aware policies.

All quantities are seconds. *Slack* is the time to spare if the rest of the job ran on
on-demand from a fresh launch now (:attr:`JobState.slack`). A policy may take a risk
(run or wait for spot) only while the slack covers the worst that risk can cost before
the policy is asked again: one more restart, the work since the last checkpoint, and
one polling period.
"""

from __future__ import annotations

from airflow_spot_training.core.policy import Capacity, Event, JobState, format_duration


def safety_margin(state: JobState) -> float:
    """Slack a spot attempt (or a wait) must leave: one restart + lost work + one poll."""
    return state.restart_overhead + state.checkpoint_interval + state.poll_interval


def spot_looks_available(state: JobState) -> bool:
    """Best knowledge of whether a spot launch would succeed now.

    Trust ``spot_available`` when the caller knows it; otherwise assume a launch is worth
    trying unless the last try just failed.
    """
    if state.spot_available is not None:
        return state.spot_available
    return not (state.event is Event.CAPACITY_UNAVAILABLE or state.spot_unavailable)


def running_on(state: JobState, capacity: Capacity) -> bool:
    """Whether an attempt on ``capacity`` is running right now (asked at a TICK)."""
    return state.event is Event.TICK and state.current_capacity is capacity


def initial_slack(state: JobState) -> float | None:
    """Slack at the first launch: deadline window minus total work and one restart."""
    if state.total_work is None or state.deadline is None:
        return None
    return state.deadline - state.started_at - state.total_work - state.restart_overhead


fmt = format_duration  # the policies' reasons read like the operator's
