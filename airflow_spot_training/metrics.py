"""Spot-training metrics through Airflow's own stats interface.

The operator calls :func:`emit_ledger_changes` each time it saves the ledger, with the
ledger as it was last saved and as it is now. What changed in between becomes metrics
(:func:`ledger_changes`, pure), sent through ``airflow.sdk.observability.stats.Stats``,
so they go wherever the deployment sends Airflow's metrics: StatsD (with or without
Datadog or InfluxDB tags) or OpenTelemetry, filtered by ``[metrics] metrics_allow_list``
like Airflow's own. Every metric carries the tags ``dag_id``, ``task_id`` and
``backend``; some carry more (``capacity``, ``outcome``, ``to``, ``reason``).

Because the ledger lives in the task state store, each change is seen once however the
task moves between workers, deferrals and Airflow retries. Emitting never fails a task.

Counters (``incr``):

* ``spot_training.attempts`` (``capacity``): an attempt was launched;
* ``spot_training.attempt_ended`` (``capacity``, ``outcome``): an attempt ended;
* ``spot_training.preemptions`` (``capacity``): preemptions counted (a reclaim, or an
  in-place interruption the backend restarted);
* ``spot_training.escalations`` (``to``, ``reason``): the training changed capacity;
  ``reason`` is one of ``airflow_spot_training.core.reasons.ESCALATION_KINDS``;
* ``spot_training.capacity_waits``: the policy chose to wait for spot capacity;
* ``spot_training.capacity_unavailable``: a spot launch was refused for lack of capacity;
* ``spot_training.spot_seconds``, ``spot_training.on_demand_seconds``: seconds the ended
  attempts ran, by capacity (whole seconds);
* ``spot_training.capacity_wait_seconds``: seconds spent waiting for spot capacity.

Gauges (the task's running totals, set when an attempt ends):

* ``spot_training.cost_usd``, ``spot_training.on_demand_cost_usd`` (what on-demand only
  would have cost), ``spot_training.saved_usd``, ``spot_training.saved_fraction``,
  ``spot_training.spot_share`` (spot seconds / all seconds), ``spot_training.total_preemptions``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from airflow_spot_training.core.attempt import FINAL_STATES
from airflow_spot_training.core.ledger import RunLedger
from airflow_spot_training.core.reasons import escalation_kind

log = logging.getLogger(__name__)

PREFIX = "spot_training"
FINAL_OUTCOME_VALUES = frozenset(state.value for state in FINAL_STATES)
SECONDS_BY_CAPACITY = {"spot": f"{PREFIX}.spot_seconds", "on_demand": f"{PREFIX}.on_demand_seconds"}


@dataclass(frozen=True)
class MetricSample:
    """One call to make on the stats interface."""

    kind: str  # "incr" or "gauge"
    name: str
    value: float
    tags: dict[str, str] = field(default_factory=dict)


def _attempts(ledger: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    attempts = (ledger or {}).get("attempts") or []
    return {a["number"]: a for a in attempts if isinstance(a, dict) and isinstance(a.get("number"), int)}


def _launched(attempt: dict[str, Any] | None) -> bool:
    return attempt is not None and attempt.get("outcome") not in (None, "launching", "capacity_unavailable")


def _ended(attempt: dict[str, Any] | None) -> bool:
    return attempt is not None and attempt.get("outcome") in FINAL_OUTCOME_VALUES


def _ended_samples(attempt: dict[str, Any], capacity: str) -> list[MetricSample]:
    """An attempt just ended: its outcome and, when it ran, its seconds on its capacity."""
    outcome = str(attempt["outcome"])
    if outcome == "capacity_unavailable":
        return [MetricSample("incr", f"{PREFIX}.capacity_unavailable", 1, {"capacity": capacity})]
    samples = [MetricSample("incr", f"{PREFIX}.attempt_ended", 1, {"capacity": capacity, "outcome": outcome})]
    seconds = _attempt_seconds(attempt)
    if seconds >= 1 and capacity in SECONDS_BY_CAPACITY:
        samples.append(MetricSample("incr", SECONDS_BY_CAPACITY[capacity], int(round(seconds))))
    return samples


def _attempt_samples(before: dict[str, Any] | None, after: dict[str, Any]) -> list[MetricSample]:
    capacity = str(after.get("capacity") or "spot")
    samples = []
    if _launched(after) and not _launched(before):
        samples.append(MetricSample("incr", f"{PREFIX}.attempts", 1, {"capacity": capacity}))
    gained = int(after.get("preemptions") or 0) - int((before or {}).get("preemptions") or 0)
    if gained > 0:
        samples.append(MetricSample("incr", f"{PREFIX}.preemptions", gained, {"capacity": capacity}))
    if _ended(after) and not _ended(before):
        samples.extend(_ended_samples(after, capacity))
    return samples


def _attempt_seconds(attempt: dict[str, Any]) -> float:
    begin = attempt.get("started_at") if attempt.get("started_at") is not None else attempt.get("launched_at")
    end = attempt.get("ended_at")
    if not isinstance(begin, (int, float)) or not isinstance(end, (int, float)):
        return 0.0
    return max(0.0, end - begin)


def _waits(ledger: dict[str, Any]) -> int:
    return sum(1 for d in ledger.get("decisions") or [] if isinstance(d, dict) and d.get("action") == "wait")


def _ledger_samples(previous: dict[str, Any], current: dict[str, Any]) -> list[MetricSample]:
    samples = []
    for escalation in (current.get("escalations") or [])[len(previous.get("escalations") or []):]:
        to = str(escalation.get("to") or "on_demand")
        samples.append(MetricSample("incr", f"{PREFIX}.escalations", 1,
                                    {"to": to, "reason": escalation_kind(escalation.get("reason"), to)}))
    new_waits = _waits(current) - _waits(previous)
    if new_waits > 0:
        samples.append(MetricSample("incr", f"{PREFIX}.capacity_waits", new_waits))
    waited = float(current.get("spot_wait_seconds") or 0.0) - float(previous.get("spot_wait_seconds") or 0.0)
    if waited >= 1:
        samples.append(MetricSample("incr", f"{PREFIX}.capacity_wait_seconds", int(round(waited))))
    return samples


def _totals(current: dict[str, Any]) -> list[MetricSample]:
    """The task's running cost, savings and spot share (gauges)."""
    try:
        summary = RunLedger.from_dict(current).summary()
    except (TypeError, ValueError, KeyError):
        return []
    seconds = summary.get("capacity_seconds") or {}
    spot, on_demand = float(seconds.get("spot") or 0.0), float(seconds.get("on_demand") or 0.0)
    savings = summary.get("savings") or {}
    values = {
        "cost_usd": summary.get("cost"),
        "on_demand_cost_usd": savings.get("on_demand_only_cost"),
        "saved_usd": savings.get("saved"),
        "saved_fraction": savings.get("saved_fraction"),
        "spot_share": spot / (spot + on_demand) if spot + on_demand > 0 else None,
        "total_preemptions": summary.get("preemptions"),
    }
    return [MetricSample("gauge", f"{PREFIX}.{name}", float(value)) for name, value in values.items()
            if isinstance(value, (int, float))]


def ledger_changes(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[MetricSample]:
    """The metrics of what changed between two saved versions of a ledger (``RunLedger.to_dict()``).

    :param previous: the ledger as it was last saved (None before the first save).
    :param current: the ledger about to be saved.
    """
    previous = previous if isinstance(previous, dict) else {}
    before = _attempts(previous)
    samples = []
    for number, attempt in sorted(_attempts(current).items()):
        samples.extend(_attempt_samples(before.get(number), attempt))
    samples.extend(_ledger_samples(previous, current))
    if any(s.name == f"{PREFIX}.attempt_ended" for s in samples):
        samples.extend(_totals(current))
    return samples


def backend_name(backend: Any) -> str:
    """The backend tag: the backend's ``kind`` (``local``, ``ec2``, ...) or its class name."""
    return str(getattr(backend, "kind", None) or type(backend).__name__)


def emit_ledger_changes(previous: Any, ledger: RunLedger, *, ti: Any, backend: Any) -> None:
    """Send the metrics of a ledger change through Airflow's stats; log, never raise, on error.

    :param previous: the ledger dict last saved in the task state store (or None).
    :param ledger: the ledger just saved.
    :param ti: the task instance (tags ``dag_id`` and ``task_id``).
    :param backend: the operator's backend (tag ``backend``).
    """
    try:
        from airflow.sdk.observability.stats import Stats

        base = {"dag_id": str(ti.dag_id), "task_id": str(ti.task_id), "backend": backend_name(backend)}
        for sample in ledger_changes(previous, ledger.to_dict()):
            tags = {**base, **sample.tags}
            if sample.kind == "gauge":
                Stats.gauge(sample.name, sample.value, tags=tags)
            else:
                Stats.incr(sample.name, int(sample.value), tags=tags)
    except Exception:  # metrics must never fail a training
        log.warning("could not emit spot-training metrics", exc_info=True)

