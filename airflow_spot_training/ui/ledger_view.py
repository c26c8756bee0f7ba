"""What the UI shows, computed from a ledger: pure, no Airflow, no cloud SDK.

Two inputs, both optional, read defensively (ledgers of older and newer provider
versions must render, never crash):

* the **full ledger** (``RunLedger.to_dict()``), kept in the task state store: it has
  every decision (so capacity waits have times) and lets figures of a running attempt
  be recomputed for *now*;
* the **summary** (``RunLedger.summary()``), the ``ledger`` XCom: what the operator
  published last, with anything later versions add (per-attempt ``links``, ...).

:func:`task_instance_view` turns them into the task-instance page's model (timeline
bars, preemption marks, capacity waits, escalations, deadline, checkpoint progress,
cost and savings); :func:`overview_row` and :func:`savings_chart` serve the overview.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from airflow_spot_training.core.ledger import RunLedger
from airflow_spot_training.core.reasons import escalation_kind

SPOT = "spot"
ON_DEMAND = "on_demand"
#: task-instance states in which the ledger can still change (the page keeps polling)
LIVE_TI_STATES = frozenset({"queued", "scheduled", "running", "deferred", "up_for_retry", "restarting",
                            "up_for_reschedule"})


def decoded(value: Any) -> Any:
    """An XCom or state-store value, JSON-decoded as often as it was encoded (at most twice)."""
    for _ in range(2):
        if not isinstance(value, (str, bytes)):
            break
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value


def is_ledger_summary(value: Any) -> bool:
    """Whether an XCom value is a spot-training ledger summary (the key ``ledger`` is not ours alone)."""
    return isinstance(value, dict) and isinstance(value.get("attempts"), list) and "run_key" in value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _computed_summary(full: Any, now: float) -> dict[str, Any] | None:
    """The summary recomputed for ``now`` from the full ledger; None when it cannot be read."""
    if not isinstance(full, dict) or not isinstance(full.get("attempts"), list):
        return None
    try:
        return RunLedger.from_dict(full).summary(now)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _links(*attempt_dicts: Any) -> list[dict[str, str]]:
    """Per-attempt links (``[{"name", "url"}]``) from the first record that has any."""
    for data in attempt_dicts:
        links = data.get("links") if isinstance(data, dict) else None
        usable = [{"name": str(link.get("name") or "link"), "url": str(link["url"])}
                  for link in links or [] if isinstance(link, dict) and link.get("url")]
        if usable:
            return usable
    return []


def _by_number(attempts: Any) -> dict[int, dict[str, Any]]:
    if not isinstance(attempts, list):
        return {}
    return {a["number"]: a for a in attempts if isinstance(a, dict) and isinstance(a.get("number"), int)}


def _attempt_view(summary_attempt: dict[str, Any], raw: dict[str, Any] | None, published: dict[str, Any] | None,
                  now: float) -> dict[str, Any]:
    start = _number(summary_attempt.get("started_at"))
    if raw is not None and start is None:
        start = _number(raw.get("launched_at"))
    end = _number(summary_attempt.get("ended_at"))
    outcome = str(summary_attempt.get("outcome") or "unknown")
    live = outcome in ("running", "launching")
    return {
        "number": summary_attempt.get("number"),
        "capacity": str(summary_attempt.get("capacity") or SPOT),
        "outcome": outcome,
        "reason": str(summary_attempt.get("reason") or ""),
        "start": start,
        "end": end if end is not None else (now if live and start is not None else start),
        "live": live,
        "seconds": _number(summary_attempt.get("seconds")) or 0.0,
        "preemptions": int(summary_attempt.get("preemptions") or 0),
        "nodes": int(summary_attempt.get("nodes") or 1),
        "start_step": summary_attempt.get("start_step"),
        "checkpoint_step": summary_attempt.get("checkpoint_step"),
        "try_number": summary_attempt.get("try_number"),
        "pool": summary_attempt.get("pool"),
        "pool_reason": _text(summary_attempt.get("pool_reason")),
        "cost": _number(summary_attempt.get("cost")),
        "saved": _number(summary_attempt.get("saved")),
        "links": _links(summary_attempt, published, raw),
    }


def _decision_waits(full: Any, attempts: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Each "wait for spot" decision of the full ledger, until the next launch (or its planned end)."""
    decisions = full.get("decisions") if isinstance(full, dict) else None
    waits = [d for d in decisions if isinstance(d, dict) and d.get("action") == "wait"
             and _number(d.get("at")) is not None] if isinstance(decisions, list) else []
    starts = sorted(a["start"] for a in attempts if a["start"] is not None)
    out = []
    for decision in waits:
        begin = float(decision["at"])
        planned = begin + (_number(decision.get("wait_seconds")) or 0.0)
        following = [s for s in starts if s > begin][:1]
        end = min(planned, following[0] if following else now)
        out.append({"start": begin, "end": max(begin, end), "reason": str(decision.get("reason") or ""),
                    "kind": "wait"})
    return out


def _capacity_waits(full: Any, attempts: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Intervals spent waiting for spot capacity, and launches refused for lack of it."""
    refused = [{"start": a["start"], "end": a["end"] or a["start"], "reason": a["reason"], "kind": "refused"}
               for a in attempts if a["outcome"] == "capacity_unavailable" and a["start"] is not None]
    waits = _decision_waits(full, attempts, now) + refused
    return sorted(waits, key=lambda w: (w["start"], w["kind"] != "refused"))


def _preemption_marks(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One mark per preemption: at the end of a reclaimed attempt (several at once when the
    backend restarted the attempt in place and only the count is known)."""
    marks = []
    for attempt in attempts:
        if attempt["preemptions"] <= 0:
            continue
        at = attempt["end"] if attempt["end"] is not None else attempt["start"]
        marks.append({"attempt": attempt["number"], "at": at, "count": attempt["preemptions"],
                      "in_place": attempt["outcome"] != "preempted" or attempt["preemptions"] > 1})
    return marks


def _escalations(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for item in summary.get("escalations") or []:
        if not isinstance(item, dict):
            continue
        to = str(item.get("to") or ON_DEMAND)
        reason = str(item.get("reason") or "")
        out.append({"at": _number(item.get("at")), "to": to, "reason": reason,
                    "kind": escalation_kind(reason, to), "at_attempt": item.get("at_attempt")})
    return out


def _checkpoint(summary: dict[str, Any], attempts: list[dict[str, Any]], raw_attempts: dict[int, dict[str, Any]],
                now: float) -> dict[str, Any]:
    """Checkpoint progress, and when it was last known to the ledger.

    The ledger records a committed step when an attempt ends (or is interrupted), not when
    it was committed: the age shown is counted from the earliest record of the step, so
    the commit is at least that old. A commit time (``checkpoint_committed_at``) is used
    when a ledger has one.
    """
    step, total = summary.get("final_checkpoint_step"), summary.get("total_steps")
    known_at = None
    for attempt in attempts:
        if attempt["checkpoint_step"] is None or attempt["checkpoint_step"] != step:
            continue
        committed = _number(raw_attempts.get(attempt["number"], {}).get("checkpoint_committed_at"))
        candidate = committed or (attempt["end"] if not attempt["live"] else attempt["start"])
        if candidate is not None and (known_at is None or candidate < known_at):
            known_at = candidate  # the earliest record of the step: the commit is at least that old
    fraction = min(1.0, step / total) if isinstance(step, int) and isinstance(total, int) and total else None
    return {"step": step, "total": total, "fraction": fraction, "known_at": known_at,
            "age_seconds": None if known_at is None else max(0.0, now - known_at)}


def _money(summary: dict[str, Any], capacity_seconds: dict[str, float]) -> dict[str, Any]:
    savings = summary.get("savings") if isinstance(summary.get("savings"), dict) else {}
    spend = summary.get("spend") if isinstance(summary.get("spend"), dict) else {}
    spot, on_demand = capacity_seconds.get(SPOT, 0.0), capacity_seconds.get(ON_DEMAND, 0.0)
    return {
        "spent": _number(spend.get("total")),
        "spent_on_demand": _number(spend.get("on_demand")),
        "max_cost": _number(spend.get("max_cost")),
        "max_on_demand_cost": _number(spend.get("max_on_demand_cost")),
        "cost": _number(summary.get("cost")),
        "on_demand_only_cost": _number(savings.get("on_demand_only_cost")),
        "saved": _number(savings.get("saved")),
        "saved_fraction": _number(savings.get("saved_fraction")),
        "spot_seconds": spot,
        "on_demand_seconds": on_demand,
        "spot_share": spot / (spot + on_demand) if spot + on_demand > 0 else None,
    }


def task_instance_view(full: Any, published: Any, *, now: float | None = None,
                       ti_state: str | None = None) -> dict[str, Any]:
    """The task-instance page's model; ``{"found": False}`` when neither input is a ledger.

    :param full: the full ledger from the task state store (or None).
    :param published: the ``ledger`` XCom summary (or None).
    :param now: the time figures of running attempts are computed for (default: now).
    :param ti_state: the task instance's state; the page polls while it is live.
    """
    now = time.time() if now is None else now
    full, published = decoded(full), decoded(published)
    summary = _computed_summary(full, now) or (published if is_ledger_summary(published) else None)
    if summary is None:
        return {"found": False, "ti_state": ti_state, "now": now, "live": ti_state in LIVE_TI_STATES}
    raw_attempts = _by_number(full.get("attempts") if isinstance(full, dict) else None)
    published_attempts = _by_number(published.get("attempts") if isinstance(published, dict) else None)
    attempts = [
        _attempt_view(a, raw_attempts.get(a.get("number")), published_attempts.get(a.get("number")), now)
        for a in summary.get("attempts") or [] if isinstance(a, dict)
    ]
    escalations = _escalations(summary)
    waits = _capacity_waits(full, attempts, now)
    return {
        "found": True,
        "now": now,
        "ti_state": ti_state,
        "live": ti_state in LIVE_TI_STATES or any(a["live"] for a in attempts),
        "outcome": summary.get("outcome"),
        "run_key": summary.get("run_key"),
        "checkpoint_prefix": summary.get("checkpoint_prefix"),
        "attempts": attempts,
        "preemptions": int(summary.get("preemptions") or 0),
        "preemption_marks": _preemption_marks(attempts),
        "capacity_waits": waits,
        "spot_wait_seconds": _number(summary.get("spot_wait_seconds")) or 0.0,
        "escalations": escalations,
        "deadline": _number(summary.get("deadline")),
        "window": _window(attempts, waits, escalations, now),
        "checkpoint": _checkpoint(summary, attempts, raw_attempts, now),
        "recomputed_steps": int(summary.get("recomputed_steps") or 0),
        "tries": list(summary.get("tries") or []),
        "metrics": _training_metrics(summary, published),
        **_money(summary, _capacity_seconds(summary)),
    }


def _capacity_seconds(summary: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (summary.get("capacity_seconds") or {}).items() if _number(v) is not None}


def _window(attempts: list[dict[str, Any]], waits: list[dict[str, Any]], escalations: list[dict[str, Any]],
            now: float) -> dict[str, float]:
    """The time axis: from the first to the last thing drawn (the page adds the deadline when near)."""
    times = [t for a in attempts for t in (a["start"], a["end"]) if t is not None]
    times += [w["end"] for w in waits] + [e["at"] for e in escalations if e["at"] is not None]
    start, end = (min(times), max(times)) if times else (now, now)
    return {"start": start, "end": max(end, start + 1.0)}


def _training_metrics(summary: dict[str, Any], published: Any) -> dict[str, Any]:
    """What the training itself reported (on success), from whichever copy has it."""
    for source in (summary, published):
        metrics = source.get("metrics") if isinstance(source, dict) else None
        if isinstance(metrics, dict):
            return metrics
    return {}


def overview_row(published: Any) -> dict[str, Any] | None:
    """The overview's figures for one task instance, from its ``ledger`` XCom; None if not ours."""
    summary = decoded(published)
    if not is_ledger_summary(summary):
        return None
    escalations = _escalations(summary)
    attempts = [a for a in summary["attempts"] if isinstance(a, dict)]
    return {
        "outcome": summary.get("outcome"),
        "attempts": len(attempts),
        "preemptions": int(summary.get("preemptions") or 0),
        "escalations": len(escalations),
        "escalation_kinds": sorted({e["kind"] for e in escalations}),
        "on_demand_attempts": sum(1 for a in attempts if a.get("capacity") == ON_DEMAND),
        "final_checkpoint_step": summary.get("final_checkpoint_step"),
        "total_steps": summary.get("total_steps"),
        **_money(summary, _capacity_seconds(summary)),
    }


#: how wide a chart bucket is, by how many days the rows span: at most ~100 buckets
BUCKETS = ((100, "day"), (700, "week"), (None, "month"))


def _bucket_of(timestamp: float, bucket: str) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    if bucket == "week":  # the Monday that starts the ISO week
        monday = moment.date().toordinal() - moment.weekday()
        return datetime.fromordinal(monday).strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m" if bucket == "month" else "%Y-%m-%d")


def _bucket_for(timestamps: list[float]) -> str:
    span_days = (max(timestamps) - min(timestamps)) / 86400 if timestamps else 0
    return next(name for limit, name in BUCKETS if limit is None or span_days <= limit)


def savings_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Savings and preemptions per DAG and period (UTC days, weeks or months), for the chart.

    :param rows: overview rows with ``dag_id``, ``run_after`` (epoch seconds), ``saved`` and
        ``preemptions``.
    :return: ``{"bucket": "day" | "week" | "month", "days": [period labels], "series":
        [{"dag_id", "saved": [...], "preemptions": [...], "runs": [...]}]}``, one value per
        period, in order; a period is as wide as keeps the chart under about 100 of them.
    """
    timed = [r for r in rows if r.get("run_after") is not None]
    bucket = _bucket_for([r["run_after"] for r in timed])
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for row in timed:
        cell = cells.setdefault((row["dag_id"], _bucket_of(row["run_after"], bucket)),
                                {"saved": 0.0, "preemptions": 0, "runs": 0})
        cell["saved"] += row.get("saved") or 0.0
        cell["preemptions"] += row.get("preemptions") or 0
        cell["runs"] += 1
    periods = sorted({period for _, period in cells})
    series = []
    for dag_id in sorted({dag for dag, _ in cells}):
        empty = {"saved": 0.0, "preemptions": 0, "runs": 0}
        values = [cells.get((dag_id, period), empty) for period in periods]
        series.append({"dag_id": dag_id, "saved": [round(v["saved"], 6) for v in values],
                       "preemptions": [int(v["preemptions"]) for v in values],
                       "runs": [int(v["runs"]) for v in values]})
    return {"bucket": bucket, "days": periods, "series": series}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over overview rows: what spot saved across everything the filter selects."""
    cost = sum(r["cost"] or 0.0 for r in rows)
    baseline = sum(r["on_demand_only_cost"] or 0.0 for r in rows)
    spot = sum(r["spot_seconds"] for r in rows)
    on_demand = sum(r["on_demand_seconds"] for r in rows)
    return {
        "task_instances": len(rows),
        "preemptions": sum(r["preemptions"] for r in rows),
        "escalated": sum(1 for r in rows if r["escalations"]),
        "cost": round(cost, 6),
        "saved": round(sum(r["saved"] or 0.0 for r in rows), 6),
        "saved_fraction": round(1 - cost / baseline, 6) if baseline else None,
        "spot_share": spot / (spot + on_demand) if spot + on_demand > 0 else None,
    }
