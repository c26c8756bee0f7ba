"""The run ledger: the durable record of every attempt of one training task.

Pure: no Airflow, no cloud SDK. The operator keeps one ledger per task instance
(dag_id, run_id, task_id, map_index), persists it where it survives Airflow
retries, and returns its summary as the task's XCom result.

Preemptions are never kept as a bare counter: they are derived from the attempt
records, so a ledger that was written is a ledger that remembers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_spot_training.core.policy import Capacity, Decision

# Outcomes of an attempt.
RUNNING = "running"
LAUNCHING = "launching"
SUCCEEDED = "succeeded"
PREEMPTED = "preempted"
FAILED = "failed"
CAPACITY_UNAVAILABLE = "capacity_unavailable"
STOPPED = "stopped"  # stopped by us: task killed, or moved back to spot
FINAL_OUTCOMES = frozenset({SUCCEEDED, PREEMPTED, FAILED, CAPACITY_UNAVAILABLE, STOPPED})
LIVE_OUTCOMES = frozenset({RUNNING, LAUNCHING})

LEDGER_VERSION = 1


@dataclass
class AttemptRecord:
    """One launch of the training on one kind of capacity."""

    number: int
    capacity: str
    token: str
    try_number: int
    outcome: str = LAUNCHING
    reason: str = ""
    launched_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    preemptions: int = 0
    start_step: int | None = None
    checkpoint_step: int | None = None
    total_steps: int | None = None
    handle: dict[str, Any] | None = None
    pool: str | None = None
    price_per_hour: float | None = None
    billable_seconds: float | None = None
    #: compute seconds the cloud measured (SageMaker's TrainingTimeInSeconds); spot savings
    #: show as billable_seconds below it
    training_seconds: float | None = None
    #: what the same seconds cost on on-demand capacity, per hour (for per-attempt savings)
    on_demand_price_per_hour: float | None = None

    @property
    def is_live(self) -> bool:
        return self.outcome in LIVE_OUTCOMES

    def seconds(self, now: float | None = None) -> float:
        begin = self.started_at if self.started_at is not None else self.launched_at
        if begin is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else (now if now is not None else time.time())
        return max(0.0, end - begin)

    def cost(self, now: float | None = None) -> float | None:
        if self.price_per_hour is None:
            return None
        seconds = self.billable_seconds if self.billable_seconds is not None else self.seconds(now)
        return seconds / 3600.0 * self.price_per_hour

    def baseline_seconds(self, now: float | None = None) -> float:
        """Seconds an on-demand run of the same work would bill."""
        if self.training_seconds is not None:
            return self.training_seconds
        return self.billable_seconds if self.billable_seconds is not None else self.seconds(now)

    def savings(self, on_demand_price: float | None, now: float | None = None) -> float | None:
        """USD saved against running this attempt's seconds on on-demand capacity."""
        price = self.on_demand_price_per_hour or on_demand_price
        cost = self.cost(now)
        if price is None or cost is None:
            return None
        return self.baseline_seconds(now) / 3600.0 * price - cost

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Escalation:
    at_attempt: int
    at: float
    to: str
    reason: str


@dataclass
class RunLedger:
    """All attempts, preemptions and decisions of one task instance, across Airflow tries."""

    run_key: str
    checkpoint_prefix: str
    first_launch_at: float | None = None
    deadline: float | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    tries: list[int] = field(default_factory=list)
    spot_wait_seconds: float = 0.0
    waiting_since: float | None = None
    prices: dict[str, float] = field(default_factory=dict)
    version: int = LEDGER_VERSION

    # -- derived figures -------------------------------------------------------------
    @property
    def preemptions(self) -> int:
        return sum(a.preemptions for a in self.attempts)

    @property
    def current(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def live_attempt(self) -> AttemptRecord | None:
        cur = self.current
        return cur if cur is not None and cur.is_live else None

    @property
    def last_checkpoint_step(self) -> int | None:
        steps = [a.checkpoint_step for a in self.attempts if a.checkpoint_step is not None]
        return max(steps) if steps else None

    @property
    def total_steps(self) -> int | None:
        for a in reversed(self.attempts):
            if a.total_steps:
                return a.total_steps
        return None

    @property
    def progress(self) -> float | None:
        step, total = self.last_checkpoint_step, self.total_steps
        if step is None or not total:
            return None
        return min(1.0, step / total)

    def compute_seconds(self, now: float | None = None) -> float:
        return sum(a.seconds(now) for a in self.attempts)

    def capacity_seconds(self, now: float | None = None) -> dict[str, float]:
        out = {c.value: 0.0 for c in Capacity}
        for a in self.attempts:
            out[a.capacity] = out.get(a.capacity, 0.0) + a.seconds(now)
        return out

    def recomputed_steps(self) -> int:
        """Steps trained more than once because a preemption lost work since a checkpoint.

        For each attempt after the first: the steps between where the previous attempt
        got to (its last committed step, or its reported step) and where this one resumed.
        Only known when attempts report the step they resumed from.
        """
        total = 0
        reached: int | None = None
        for a in self.attempts:
            if reached is not None and a.start_step is not None and a.start_step < reached:
                total += reached - a.start_step
            if a.checkpoint_step is not None:
                reached = max(reached or 0, a.checkpoint_step)
        return total

    def next_attempt_number(self) -> int:
        return len(self.attempts) + 1

    # -- changes ---------------------------------------------------------------------
    def note_try(self, try_number: int) -> None:
        if try_number not in self.tries:
            self.tries.append(try_number)

    def record_decision(self, decision: Decision, event: str, now: float) -> None:
        self.decisions.append({"at": now, "event": event, **decision.to_dict()})
        cur = self.current
        new_capacity = decision.action.capacity
        previous = cur.capacity if cur is not None else Capacity.SPOT.value
        if new_capacity is not None and new_capacity.value != previous:
            self.escalations.append(
                Escalation(
                    at_attempt=len(self.attempts) + 1, at=now, to=new_capacity.value, reason=decision.reason
                )
            )

    # -- (de)serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunLedger:
        data = dict(data)
        attempts = [AttemptRecord.from_dict(a) for a in data.pop("attempts", [])]
        escalations = [Escalation(**e) for e in data.pop("escalations", [])]
        known = {f for f in cls.__dataclass_fields__}
        ledger = cls(**{k: v for k, v in data.items() if k in known})
        ledger.attempts = attempts
        ledger.escalations = escalations
        return ledger

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The task's XCom result: JSON-safe, meant for people and downstream tasks."""
        cap = self.capacity_seconds(now)
        cost = None
        savings = None
        costs = [a.cost(now) for a in self.attempts]
        if self.attempts and all(c is not None for c in costs):
            cost = sum(costs)  # type: ignore[arg-type]
            od = self.prices.get(Capacity.ON_DEMAND.value)
            if od:
                baseline = sum(a.baseline_seconds(now) / 3600.0 * (a.on_demand_price_per_hour or od)
                               for a in self.attempts)
                savings = {
                    "on_demand_only_cost": round(baseline, 6),
                    "saved": round(baseline - cost, 6),
                    "saved_fraction": round(1 - cost / baseline, 6) if baseline else None,
                }
        final = self.current
        return {
            "run_key": self.run_key,
            "checkpoint_prefix": self.checkpoint_prefix,
            "outcome": final.outcome if final else None,
            "attempts": [
                {
                    "number": a.number,
                    "capacity": a.capacity,
                    "outcome": a.outcome,
                    "reason": a.reason,
                    "started_at": a.started_at if a.started_at is not None else a.launched_at,
                    "ended_at": a.ended_at,
                    "seconds": round(a.seconds(now), 3),
                    "preemptions": a.preemptions,
                    "start_step": a.start_step,
                    "checkpoint_step": a.checkpoint_step,
                    "try_number": a.try_number,
                    "pool": a.pool,
                    "cost": None if a.cost(now) is None else round(a.cost(now), 6),  # type: ignore[arg-type]
                    "billable_seconds": a.billable_seconds,
                    "training_seconds": a.training_seconds,
                    "saved": _rounded(a.savings(self.prices.get(Capacity.ON_DEMAND.value), now)),
                }
                for a in self.attempts
            ],
            "preemptions": self.preemptions,
            "escalations": [asdict(e) for e in self.escalations],
            "tries": list(self.tries),
            "capacity_seconds": {k: round(v, 3) for k, v in cap.items()},
            "spot_wait_seconds": round(self.spot_wait_seconds, 3),
            "cost": None if cost is None else round(cost, 6),
            "savings": savings,
            "final_checkpoint_step": self.last_checkpoint_step,
            "total_steps": self.total_steps,
            "recomputed_steps": self.recomputed_steps(),
            "deadline": self.deadline,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def format_summary(summary: dict[str, Any]) -> str:
    """Render a ledger summary as a plain-text table for logs and the demo."""
    lines = []
    header = f"{'#':>2}  {'capacity':<9}  {'outcome':<20}  {'seconds':>8}  {'from step':>9}  {'to step':>7}  reason"
    lines.append(header)
    lines.append("-" * len(header))
    for a in summary["attempts"]:
        lines.append(
            f"{a['number']:>2}  {a['capacity']:<9}  {a['outcome']:<20}  {a['seconds']:>8.1f}  "
            f"{'' if a['start_step'] is None else a['start_step']:>9}  "
            f"{'' if a['checkpoint_step'] is None else a['checkpoint_step']:>7}  {a['reason']}"
        )
    lines.append("")
    lines.append(f"preemptions:        {summary['preemptions']}")
    for e in summary["escalations"]:
        lines.append(f"escalation:         before attempt {e['at_attempt']} to {e['to']}: {e['reason']}")
    if not summary["escalations"]:
        lines.append("escalation:         none")
    lines.append(f"checkpoint prefix:  {summary['checkpoint_prefix']}")
    step, total = summary.get("final_checkpoint_step"), summary.get("total_steps")
    lines.append(f"final checkpoint:   step {step}" + (f" / {total}" if total else ""))
    lines.append(f"recomputed steps:   {summary.get('recomputed_steps', 0)}")
    for name, value in sorted((summary.get("metrics") or {}).items()):
        shown = f"{value:.6g}" if isinstance(value, float) else value
        lines.append(f"{name + ':':<20}{shown}")
    cap = summary["capacity_seconds"]
    lines.append(
        "capacity seconds:   " + ", ".join(f"{k} {v:.1f}" for k, v in cap.items())
    )
    if summary.get("cost") is not None:
        lines.append(f"estimated cost:     {summary['cost']:.4f} USD")
    if summary.get("savings"):
        s = summary["savings"]
        lines.append(
            f"savings:            {s['saved']:.4f} USD vs on-demand only ({(s['saved_fraction'] or 0) * 100:.0f}%)"
        )
    return "\n".join(lines)
