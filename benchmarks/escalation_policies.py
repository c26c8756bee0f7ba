"""Benchmark every escalation policy on the shared spot traces against the offline optimum.

    python benchmarks/escalation_policies.py            # full sweep
    python benchmarks/escalation_policies.py --quick    # a few offsets, for a smoke run
    python benchmarks/escalation_policies.py --update-docs   # also refresh docs/images/

For every trace under ``$SPOT_TRACES_DIR`` (default ``<project root>/../shared/spot-traces``),
evenly spaced start offsets, restart overheads of 0.1 h and 0.2 h and each (task, deadline)
setting, it replays every registered policy through the simulator and solves the offline
optimum. Costs are normalized to running the job on on-demand only. Single-pool runs use
one trace; multi-pool runs give the simulator every zone of the same instance type from
the same measurement campaign at once.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_spot_training.core.policies import POLICIES, make_policy  # noqa: E402
from airflow_spot_training.simulate.optimum import optimal_cost  # noqa: E402
from airflow_spot_training.simulate.simulator import on_demand_only_cost, simulate  # noqa: E402
from airflow_spot_training.simulate.traces import find_traces, load_trace, traces_dir  # noqa: E402

SETTINGS = [(48, 52), (48, 60), (48, 70), (8, 10), (8, 16)]  # (task hours, deadline hours)
OVERHEADS = [0.1, 0.2]  # restart overhead, hours
MIN_STEP = 120  # seconds: finer traces are resampled to a whole multiple of their gap >= this


def step_for(gap: float) -> float:
    return gap * math.ceil(MIN_STEP / gap) if gap < MIN_STEP else gap


def load_groups(root: Path) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """Single-pool cases (one per trace) and multi-pool cases (zones of one instance type)."""
    singles, by_type = [], defaultdict(list)
    for path in find_traces(root):
        rel = path.relative_to(root).as_posix()
        trace = load_trace(path, rel)
        trace = trace.resampled(step_for(trace.gap_seconds))
        singles.append((rel, [trace]))
        campaign, _, fname = rel.rpartition("/")
        by_type[(campaign, fname.split("_", 1)[1].removesuffix(".json"))].append(trace)
    multis = [(f"{c}/*_{t}", ts) for (c, t), ts in sorted(by_type.items()) if len(ts) > 1]
    return singles, multis


def run_case(args: tuple) -> list[dict]:
    """All offsets x overheads x settings for one trace group; returns one row per job and policy."""
    label, traces, n_offsets, mode = args
    gap = traces[0].gap_seconds
    n = min(len(t.available) for t in traces)
    rows = []
    for i in range(n_offsets):
        start = i * n // n_offsets
        for overhead_h in OVERHEADS:
            for task_h, deadline_h in SETTINGS:
                task, deadline, overhead = task_h * 3600, deadline_h * 3600, overhead_h * 3600
                length = int(math.ceil((deadline + task) / gap)) + 4
                pools = [t.window(start, length) for t in traces]
                norm = on_demand_only_cost(task, overhead)
                opt = optimal_cost(pools, gap, task, deadline, overhead) / norm
                base = dict(mode=mode, case=label, offset=start, overhead=overhead_h,
                            setting=(task_h, deadline_h), optimum=opt)
                for name in POLICIES:
                    r = simulate(make_policy(name), pools, gap, task, deadline, overhead)
                    rows.append(dict(base, policy=name, cost=r.cost / norm, missed=r.missed,
                                     preemptions=r.preemptions))
    return rows


def summarize(rows: list[dict]) -> dict:
    out = {}
    groups = defaultdict(list)
    for r in rows:
        groups[(r["mode"], r["setting"], r["policy"])].append(r)
        groups[(r["mode"], "all", r["policy"])].append(r)
    for key, rs in groups.items():
        out[key] = dict(
            n=len(rs),
            cost=statistics.fmean(r["cost"] for r in rs),
            optimum=statistics.fmean(r["optimum"] for r in rs),
            gap=statistics.fmean(r["cost"] - r["optimum"] for r in rs),
            worst=max(r["cost"] for r in rs),
            misses=sum(r["missed"] for r in rs),
        )
    return out


def table(summary: dict, mode: str) -> str:
    lines = [
        "| task / deadline | policy | mean cost | gap to optimum | worst | misses | UP gap closed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    settings = [s for s in SETTINGS] + ["all"]
    for s in settings:
        label = "all settings" if s == "all" else f"{s[0]} h in {s[1]} h"
        if (mode, s, "deadline_aware") not in summary:
            continue
        first = summary[(mode, s, "deadline_aware")]
        up = summary[(mode, s, "uniform_progress")]
        closed = (up["cost"] - first["cost"]) / (up["cost"] - first["optimum"]) if up["cost"] > first["optimum"] else 0.0
        lines.append(f"| {label} | optimum (offline) | {first['optimum']:.3f} | - | - | - | - |")
        for name in POLICIES:
            m = summary[(mode, s, name)]
            extra = f"{closed:.0%}" if name == "deadline_aware" else ""
            lines.append(
                f"| {label} | {name} | {m['cost']:.3f} | {m['gap']:+.3f} | {m['worst']:.3f} | "
                f"{m['misses']}/{m['n']} | {extra} |"
            )
    return "\n".join(lines)


def plot(summary: dict, modes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["optimum", *POLICIES]
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.5), squeeze=False)
    width = 0.8 / len(names)
    for ax, mode in zip(axes[0], modes):
        labels = [f"{t} h in {d} h" for t, d in SETTINGS]
        for j, name in enumerate(names):
            vals = []
            for s in SETTINGS:
                m = summary[(mode, s, "deadline_aware" if name == "optimum" else name)]
                vals.append(m["optimum"] if name == "optimum" else m["cost"])
            ax.bar([i + (j - len(names) / 2 + 0.5) * width for i in range(len(SETTINGS))], vals, width,
                   label=name)
        ax.set_xticks(range(len(SETTINGS)), labels)
        ax.set_ylim(0, 1.1)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("mean cost / on-demand-only cost")
        ax.set_title(f"{mode} pool")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=None, help="traces folder (default: shared traces)")
    parser.add_argument("--offsets", type=int, default=24, help="start offsets per trace (default 24)")
    parser.add_argument("--quick", action="store_true", help="4 offsets per trace")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--single-only", action="store_true", help="skip the multi-pool sweep")
    parser.add_argument("--update-docs", action="store_true", help="also write docs/images/escalation_policies.png")
    args = parser.parse_args(argv)
    root = args.traces or traces_dir()
    n_offsets = 4 if args.quick else args.offsets
    singles, multis = load_groups(root)
    cases = [(label, ts, n_offsets, "single") for label, ts in singles]
    if not args.single_only:
        cases += [(label, ts, n_offsets, "multi") for label, ts in multis]
    started = time.time()
    with Pool(max(1, args.jobs)) as pool:
        rows = [r for chunk in pool.imap_unordered(run_case, cases) for r in chunk]
    summary = summarize(rows)
    modes = ["single"] + ([] if args.single_only else ["multi"])
    print(f"{len(singles)} traces, {len(multis)} multi-pool groups, {n_offsets} offsets each, "
          f"restart overheads {OVERHEADS} h; {len(rows) // len(POLICIES)} jobs in {time.time() - started:.0f} s")
    for mode in modes:
        print(f"\n### {mode}-pool\n")
        print(table(summary, mode))
    out = ROOT / "benchmarks" / "out" / "escalation_policies.png"
    plot(summary, modes, out)
    print(f"\nplot: {out}")
    if args.update_docs:
        docs = ROOT / "docs" / "images" / "escalation_policies.png"
        plot(summary, modes, docs)
        print(f"plot: {docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
