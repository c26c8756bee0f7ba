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
from typing import Any, Mapping

from airflow_spot_training.core.attempt import AttemptState, check_version
from airflow_spot_training.core.policy import Capacity, Decision
from airflow_spot_training.core.pool_health import PoolEvent, PoolObservation

#: version 2: typed outcomes, progress steps and links per attempt (version 1 ledgers still load)
LEDGER_VERSION = 2


@dataclass
class AttemptRecord:
    """One launch of the training on one kind of capacity."""

    number: int
    capacity: str
    token: str
    try_number: int
    outcome: AttemptState = AttemptState.LAUNCHING
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
    #: the last step the training reported executing (its progress record); beyond the last
    #: checkpoint when a preemption cut the attempt short
    progress_step: int | None = None
    #: console and log pages of this attempt: ``[{"name": ..., "url": ...}]``
    links: list[dict[str, str]] = field(default_factory=list)
    #: in-place interruptions (SageMaker) after the training's final checkpoint: they cost
    #: nothing and are not preemptions, but the backend keeps counting them
    ignored_interruptions: int = 0
    #: machines the attempt ran on together (a gang); billed as node-seconds, and one node
    #: reclaimed is one preemption of the attempt
    nodes: int = 1
    #: pool health: the ladder in the order this attempt's launch tried it, and why
    pool_order: list[str] | None = None
    pool_reason: str | None = None
    #: pools the launch passed over (or, for ``capacity_unavailable``, every pool) for lack of capacity
    pools_without_capacity: list[str] = field(default_factory=list)
    #: where the backend put the trained model, when it says (SageMaker's ModelArtifacts)
    model_uri: str | None = None

    def __post_init__(self) -> None:
        self.outcome = AttemptState(self.outcome)

    @property
    def is_live(self) -> bool:
        return self.outcome.is_live

    @property
    def reached_step(self) -> int | None:
        """The furthest step this attempt is known to have executed."""
        steps = [s for s in (self.start_step, self.checkpoint_step, self.progress_step) if s is not None]
        return max(steps) if steps else None

    def seconds(self, now: float | None = None) -> float:
        begin = self.started_at if self.started_at is not None else self.launched_at
        if begin is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else (now if now is not None else time.time())
        return max(0.0, end - begin)

    def node_seconds(self, now: float | None = None) -> float:
        """Billed machine-seconds: each node's billable (else wall-clock) seconds, times the nodes."""
        seconds = self.billable_seconds if self.billable_seconds is not None else self.seconds(now)
        return seconds * self.nodes

    def cost(self, now: float | None = None) -> float | None:
        """price x nodes x seconds (a cloud's billable seconds are per node, as SageMaker reports them)."""
        if self.price_per_hour is None:
            return None
        return self.node_seconds(now) / 3600.0 * self.price_per_hour

    def baseline_seconds(self, now: float | None = None) -> float:
        """Node-seconds an on-demand run of the same work would bill."""
        if self.training_seconds is not None:
            return self.training_seconds * self.nodes
        return self.node_seconds(now)

    def savings(self, on_demand_price: float | None, now: float | None = None) -> float | None:
        """USD saved against running this attempt's seconds on on-demand capacity."""
        price = self.on_demand_price_per_hour or on_demand_price
        cost = self.cost(now)
        if price is None or cost is None:
            return None
        return self.baseline_seconds(now) / 3600.0 * price - cost

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptRecord:
        if not isinstance(data, Mapping):
            raise ValueError(f"an attempt record must be a JSON object, got {data!r}")
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
    #: the run's spend cap (``max_cost``, ``max_on_demand_cost``, USD), as the operator was given it
    spend_cap: dict[str, float | None] | None = None
    #: warm start: the committed checkpoint of an earlier run this run starts from, and its step
    init_uri: str | None = None
    init_step: int | None = None
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
        """Step executions that repeated work an earlier attempt had already done.

        An attempt that resumes from step ``start`` below the furthest step any earlier
        attempt reached (its progress reports, else its last checkpoint) trains those steps
        again, up to where it gets itself: ``min(reached, furthest_before) - start``. Steps
        run three times count twice. Known as precisely as the training reports progress.
        """
        total = 0
        furthest: int | None = None
        for a in self.attempts:
            reached = a.reached_step
            if furthest is not None and reached is not None:
                start = a.start_step or 0  # no checkpoint at launch: it started from the beginning
                total += max(0, min(reached, furthest) - start)
            if reached is not None:
                furthest = max(furthest or 0, reached)
        return total

    def spent(self, now: float | None = None) -> dict[str, float]:
        """USD spent so far (``total``, ``on_demand``): every attempt of every try, running ones up to now."""
        from airflow_spot_training.core.spend import spend_so_far

        return spend_so_far(self, now).to_dict()

    def pool_observations(self) -> list[PoolObservation]:
        """What this run's own spot attempts saw of their pools: reclaims and capacity misses."""
        seen = []
        for a in self.attempts:
            if a.capacity != Capacity.SPOT.value:
                continue
            if a.outcome is AttemptState.PREEMPTED and a.pool and a.ended_at is not None:
                seen.append(PoolObservation(a.pool, PoolEvent.RECLAIMED, a.ended_at))
            at = a.launched_at if a.launched_at is not None else a.ended_at
            if at is not None:
                seen.extend(PoolObservation(pool, PoolEvent.NO_CAPACITY, at) for pool in a.pools_without_capacity)
        return seen

    def _spend_figures(self, now: float | None) -> dict[str, float | None]:
        figures: dict[str, float | None] = dict(self.spent(now))
        if self.spend_cap:
            figures.update(self.spend_cap)
        return figures

    def next_attempt_number(self) -> int:
        return len(self.attempts) + 1

    # -- changes ---------------------------------------------------------------------
    def note_try(self, try_number: int) -> None:
        if try_number not in self.tries:
            self.tries.append(try_number)

    def record_decision(self, decision: Decision, event: str, now: float) -> None:
        self.decisions.append({"at": now, "event": event, **decision.to_dict(), "spent": self.spent(now)})
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
        data = asdict(self)
        data["attempts"] = [a.to_dict() for a in self.attempts]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunLedger:
        """Load a stored ledger; version 1 ledgers load too, an unknown version is refused."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a spot-training ledger must be a JSON object, got {type(data).__name__}")
        check_version("the spot-training ledger", data, (1, LEDGER_VERSION))
        data = dict(data)
        attempts = [AttemptRecord.from_dict(a) for a in data.pop("attempts", None) or []]
        escalations = [Escalation(**e) for e in data.pop("escalations", None) or []]
        known = {f for f in cls.__dataclass_fields__}
        ledger = cls(**{k: v for k, v in data.items() if k in known and k != "version"})
        if not isinstance(ledger.run_key, str) or not isinstance(ledger.checkpoint_prefix, str):
            raise ValueError("a spot-training ledger needs a run_key and a checkpoint_prefix (strings)")
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
            "version": self.version,
            "outcome": final.outcome.value if final else None,
            "attempts": [
                {
                    "number": a.number,
                    "capacity": a.capacity,
                    "outcome": a.outcome.value,
                    "reason": a.reason,
                    "started_at": a.started_at if a.started_at is not None else a.launched_at,
                    "ended_at": a.ended_at,
                    "seconds": round(a.seconds(now), 3),
                    "nodes": a.nodes,
                    "node_seconds": round(a.node_seconds(now), 3),
                    "preemptions": a.preemptions,
                    "start_step": a.start_step,
                    "checkpoint_step": a.checkpoint_step,
                    "progress_step": a.progress_step,
                    "try_number": a.try_number,
                    "pool": a.pool,
                    "pool_reason": a.pool_reason,
                    "cost": None if a.cost(now) is None else round(a.cost(now), 6),  # type: ignore[arg-type]
                    "billable_seconds": a.billable_seconds,
                    "training_seconds": a.training_seconds,
                    "saved": _rounded(a.savings(self.prices.get(Capacity.ON_DEMAND.value), now)),
                    "links": [dict(link) for link in a.links],
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
            "spend": self._spend_figures(now),
            "init_uri": self.init_uri,
            "init_step": self.init_step,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _spend_lines(spend: Mapping[str, Any] | None) -> list[str]:
    """The spend-cap line of the plain-text summary: none without a cap."""
    spend = spend or {}
    caps = [f"{name}={spend[name]:g} USD" for name in ("max_cost", "max_on_demand_cost") if spend.get(name) is not None]
    if not caps:
        return []
    return [f"spent:              {spend.get('total', 0):.4f} USD ({spend.get('on_demand', 0):.4f} on on-demand); "
            f"cap {', '.join(caps)}"]


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
    if summary.get("init_uri"):
        lines.append(f"warm start:         {summary['init_uri']} (step {summary.get('init_step')})")
    nodes = sorted({a.get("nodes", 1) for a in summary["attempts"]})
    if nodes and nodes != [1]:
        lines.append(f"nodes per attempt:  {', '.join(map(str, nodes))} (billed as node-seconds)")
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
    lines.extend(_spend_lines(summary.get("spend")))
    if summary.get("savings"):
        s = summary["savings"]
        lines.append(
            f"savings:            {s['saved']:.4f} USD vs on-demand only ({(s['saved_fraction'] or 0) * 100:.0f}%)"
        )
    return "\n".join(lines)
