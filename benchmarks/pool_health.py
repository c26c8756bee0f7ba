"""Benchmark pool health on the shared multi-pool spot traces: preemptions per job and cost, on and off.

    python benchmarks/pool_health.py                # print the table
    python benchmarks/pool_health.py --offsets 8    # fewer jobs per row, a smoke run
    python benchmarks/pool_health.py --update-docs  # also rewrite the table in docs/pool-health.md

Every zone of one measurement campaign (``preemption/1-node/aws-04-22-2023``: four V100
pools in two regions; ``preemption/1-node/gcp-04-30-2023``: four c3-88 zones) is one pool
of the simulator's ladder, in file-name order ("as listed") and reversed. Jobs start at
evenly spaced offsets over the whole trace; each is replayed twice in the same run, with
the ladder restarting from its first pool with capacity at every launch (pool health off:
what the operator does without it) and with the operator's pool health rule
(:class:`~airflow_spot_training.core.pool_health.PoolHealthRule` at the operator's defaults:
30 min cool-down, 6 h window), learning from the job's own reclaims and capacity misses.
A third replay shares one set of observations between all the jobs of a row ("fleet"), as
the tasks of one deployment share them through Airflow Variables: jobs are replayed in
start order on one clock, and a job sees only observations stamped before its own now.
Same escalation policy, same traces, same jobs; only the pool choice differs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_spot_training.core.policies import make_policy  # noqa: E402
from airflow_spot_training.core.pool_health import DEFAULT_COOLDOWN, DEFAULT_WINDOW, PoolHealthRule  # noqa: E402
from airflow_spot_training.simulate.simulator import on_demand_only_cost, simulate  # noqa: E402
from airflow_spot_training.simulate.traces import Trace, load_trace, traces_dir  # noqa: E402

CAMPAIGNS = ["preemption/1-node/aws-04-22-2023", "preemption/1-node/gcp-04-30-2023"]
SETTINGS = [(8, 16), (24, 36)]  # (work hours, deadline hours)
OVERHEAD_HOURS = 0.1
POLICIES = ["deadline_aware", "greedy"]
MIN_STEP = 120  # seconds, as in benchmarks/escalation_policies.py
DOCS = ROOT / "docs" / "pool-health.md"
TABLE_START, TABLE_END = "<!-- pool-health-table:start -->", "<!-- pool-health-table:end -->"


def load_campaign(root: Path, campaign: str) -> list[Trace]:
    paths = sorted((root / campaign).glob("*.json"))
    if len(paths) < 2:
        raise FileNotFoundError(f"{root / campaign} has fewer than two pool traces")
    traces = [load_trace(path, path.stem) for path in paths]
    gap = traces[0].gap_seconds
    step = gap * math.ceil(MIN_STEP / gap) if gap < MIN_STEP else gap
    return [trace.resampled(step) for trace in traces]


def offsets(n_samples: int, job_samples: int, count: int) -> list[int]:
    span = max(1, n_samples - job_samples)
    return [i * span // count for i in range(count)]


def run_row(traces: list[Trace], policy: str, work_h: float, deadline_h: float, n_offsets: int) -> dict:
    gap = traces[0].gap_seconds
    work, deadline, overhead = work_h * 3600, deadline_h * 3600, OVERHEAD_HOURS * 3600
    length = int(math.ceil((deadline + work) / gap)) + 4
    rule = PoolHealthRule(cooldown=DEFAULT_COOLDOWN, window=DEFAULT_WINDOW)
    results: dict[str, list] = {"off": [], "on": [], "fleet": []}
    shared: list = []
    for start in offsets(min(len(t.available) for t in traces), length, n_offsets):
        pools = [t.window(start, length) for t in traces]
        for mode, pools_by in (("off", "ladder"), ("on", rule)):
            results[mode].append(simulate(make_policy(policy), pools, gap, work, deadline, overhead,
                                          pools_by=pools_by))
        results["fleet"].append(simulate(make_policy(policy), pools, gap, work, deadline, overhead, pools_by=rule,
                                         pool_observations=shared, clock_start=start * gap))
    norm = on_demand_only_cost(work, overhead)
    row = {"jobs": n_offsets}
    for mode, runs in results.items():
        row[mode] = {
            "preemptions": statistics.fmean(r.preemptions for r in runs),
            "cost": statistics.fmean(r.cost for r in runs),
            "relative": statistics.fmean(r.cost for r in runs) / norm,
            "misses": sum(r.missed for r in runs),
        }
    return row


def table(rows: list[tuple[str, str, str, tuple[int, int], dict]]) -> str:
    lines = [
        "| traces | ladder | policy | work h / deadline h | jobs | preemptions per job: off | **on** | fleet "
        "| cost per job USD: off | **on** | fleet | cost / on-demand only: off | **on** | fleet | misses off/on/fleet |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for campaign, order, policy, (work, deadline), row in rows:
        off, on, fleet = row["off"], row["on"], row["fleet"]
        lines.append(
            f"| {campaign.rsplit('/', 1)[-1]} | {order} | {policy} | {work} / {deadline} | {row['jobs']} "
            f"| {off['preemptions']:.2f} | **{on['preemptions']:.2f}** | {fleet['preemptions']:.2f} "
            f"| {off['cost']:.2f} | **{on['cost']:.2f}** | {fleet['cost']:.2f} "
            f"| {off['relative']:.3f} | **{on['relative']:.3f}** | {fleet['relative']:.3f} "
            f"| {off['misses']} / {on['misses']} / {fleet['misses']} |"
        )
    return "\n".join(lines)


def update_docs(text: str) -> None:
    doc = DOCS.read_text()
    start, end = doc.index(TABLE_START) + len(TABLE_START), doc.index(TABLE_END)
    DOCS.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offsets", type=int, default=40, help="jobs (start offsets) per row")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the table in {DOCS.name}")
    args = parser.parse_args()
    root = traces_dir()
    began = time.perf_counter()
    rows = []
    for campaign in CAMPAIGNS:
        traces = load_campaign(root, campaign)
        for order, ladder in (("as listed", traces), ("reversed", traces[::-1])):
            for policy in POLICIES:
                for work, deadline in SETTINGS:
                    rows.append((campaign, f"{order}: {', '.join(t.name for t in ladder)}", policy,
                                 (work, deadline), run_row(ladder, policy, work, deadline, args.offsets)))
    text = table(rows)
    print(text)
    def mean(mode: str, figure: str) -> float:
        return statistics.fmean(r[4][mode][figure] for r in rows)

    print(f"\nall rows, preemptions per job: off {mean('off', 'preemptions'):.2f}, on {mean('on', 'preemptions'):.2f}, "
          f"fleet {mean('fleet', 'preemptions'):.2f}; cost / on-demand only: off {mean('off', 'relative'):.3f}, "
          f"on {mean('on', 'relative'):.3f}, fleet {mean('fleet', 'relative'):.3f} "
          f"({time.perf_counter() - began:.1f} s)")
    if args.update_docs:
        update_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
