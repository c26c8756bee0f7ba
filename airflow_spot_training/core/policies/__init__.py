"""Escalation policies behind one interface, and a registry to pick them by name.

Every policy is plain Python over :class:`~airflow_spot_training.core.policy.JobState`,
so the operator and the trace simulator run the same code.
"""

from __future__ import annotations

from typing import Any

from airflow_spot_training.core.policy import EscalationPolicy, ThresholdPolicy
from airflow_spot_training.core.policies.deadline_aware import DeadlineAwarePolicy
from airflow_spot_training.core.policies.greedy import GreedyPolicy
from airflow_spot_training.core.policies.uniform_progress import UniformProgressPolicy

POLICIES: dict[str, type] = {
    "threshold": ThresholdPolicy,
    "greedy": GreedyPolicy,
    "uniform_progress": UniformProgressPolicy,
    "deadline_aware": DeadlineAwarePolicy,
}

DEFAULT_POLICY = "deadline_aware"


def make_policy(name: str = DEFAULT_POLICY, **kwargs: Any) -> EscalationPolicy:
    """Build a registered policy by name, e.g. ``make_policy("threshold", max_preemptions=2)``."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown escalation policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(**kwargs)


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "DeadlineAwarePolicy",
    "GreedyPolicy",
    "ThresholdPolicy",
    "UniformProgressPolicy",
    "make_policy",
]
