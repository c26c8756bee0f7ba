"""Escalation policies behind one interface, a registry to pick them by name, and the default rule.

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

#: the policy ``make_policy()`` builds without a name: the cheapest on the traces
DEFAULT_POLICY = "deadline_aware"
#: ``max_preemptions`` of the threshold rule when the DAG author leaves it out
DEFAULT_MAX_PREEMPTIONS = 3
#: ``max_spot_wait`` (seconds) when the DAG author leaves it out and no deadline bounds the waiting
DEFAULT_MAX_SPOT_WAIT = 3600.0


class NotGiven:
    """The type of :data:`NOT_GIVEN`: an operator argument the DAG author left out, whose
    default depends on the other arguments."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self) -> str:
        return "NOT_GIVEN"  # pickles (and deep-copies) as the one instance


NOT_GIVEN = NotGiven()


def make_policy(name: str = DEFAULT_POLICY, **kwargs: Any) -> EscalationPolicy:
    """Build a registered policy by name, e.g. ``make_policy("threshold", max_preemptions=2)``."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown escalation policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(**kwargs)


def named_policy(name: str, max_preemptions: int | None | NotGiven = NOT_GIVEN) -> EscalationPolicy:
    """A shipped policy by name, with the operator's ``max_preemptions`` where it applies.

    ``threshold`` always takes it (:data:`DEFAULT_MAX_PREEMPTIONS` when not given);
    ``deadline_aware`` takes it as a cap only when it was given; the others have no
    threshold and ignore it.
    """
    if name == "threshold":
        given = DEFAULT_MAX_PREEMPTIONS if isinstance(max_preemptions, NotGiven) else max_preemptions
        return make_policy(name, max_preemptions=given)
    if name == "deadline_aware" and not isinstance(max_preemptions, NotGiven):
        return make_policy(name, max_preemptions=max_preemptions)
    return make_policy(name)


def deadline_is_known(deadline: Any, expected_runtime: float | None) -> bool:
    """Whether the slack can be computed: a deadline and the work the job needs are both given."""
    return deadline is not None and expected_runtime is not None


def default_policy(
    *, deadline: Any, expected_runtime: float | None, max_preemptions: int | None | NotGiven = NOT_GIVEN
) -> EscalationPolicy:
    """The policy the operator uses when the DAG author chose none.

    With a deadline and an expected runtime, :class:`DeadlineAwarePolicy`: the cheapest on
    the benchmark's traces and never late there. A ``max_preemptions`` the author gave
    still caps it (after that many preemptions, on-demand to the end); left out, the
    deadline alone decides. Without either of the two the slack is unknown and the
    threshold rule stays: ``ThresholdPolicy(max_preemptions)``, 3 when left out.

    :param deadline: the operator's ``deadline`` as given (any non-``None`` value counts,
        templates included).
    :param expected_runtime: seconds of compute the job needs, or ``None``.
    :param max_preemptions: the operator's ``max_preemptions``, or :data:`NOT_GIVEN`.
    """
    name = "deadline_aware" if deadline_is_known(deadline, expected_runtime) else "threshold"
    return named_policy(name, max_preemptions)


def default_max_spot_wait(
    max_spot_wait: Any, policy: EscalationPolicy, *, deadline: Any, expected_runtime: float | None
) -> Any:
    """The operator's ``max_spot_wait``: as given, or its default when left out.

    Left out, it is :data:`DEFAULT_MAX_SPOT_WAIT` (one hour), except under
    :class:`DeadlineAwarePolicy` with a deadline and an expected runtime, where the policy
    waits only while the slack stays above its reserve, so no cap (``None``) is needed.

    :param max_spot_wait: the operator's argument (seconds, a ``timedelta``, ``None``) or
        :data:`NOT_GIVEN`.
    :param policy: the escalation policy the operator will use.
    :param deadline: the operator's ``deadline`` as given.
    :param expected_runtime: seconds of compute the job needs, or ``None``.
    """
    if not isinstance(max_spot_wait, NotGiven):
        return max_spot_wait
    if isinstance(policy, DeadlineAwarePolicy) and deadline_is_known(deadline, expected_runtime):
        return None
    return DEFAULT_MAX_SPOT_WAIT


__all__ = [
    "DEFAULT_MAX_PREEMPTIONS",
    "DEFAULT_MAX_SPOT_WAIT",
    "DEFAULT_POLICY",
    "NOT_GIVEN",
    "POLICIES",
    "DeadlineAwarePolicy",
    "GreedyPolicy",
    "NotGiven",
    "ThresholdPolicy",
    "UniformProgressPolicy",
    "default_max_spot_wait",
    "default_policy",
    "make_policy",
    "named_policy",
]
