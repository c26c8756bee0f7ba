"""Benchmark the escalation policies on the shared spot traces against the offline optimum.

    python benchmarks/escalation_policies.py                 # held-out half, full sweep
    python benchmarks/escalation_policies.py --quick         # 4 offsets per trace, a smoke run
    python benchmarks/escalation_policies.py --half both     # also the tuning half
    python benchmarks/escalation_policies.py --update-docs   # rewrite the table and the plot in the docs

For every trace under ``$SPOT_TRACES_DIR`` (default ``<project root>/../shared/spot-traces``),
evenly spaced start offsets, restart overheads of 0.1 h and 0.2 h and each (work, deadline)
setting, it replays every registered policy through the simulator and solves the offline
optimum. Costs are normalized to running the job on on-demand only. Single-pool runs use
one trace; multi-pool runs give the simulator every zone of the same instance type from
the same measurement campaign at once.

**Tuning and held-out halves.** The start offsets of every trace are split in two: those in
the first half of the trace are the *tuning* half (where the default policy's parameters
were chosen), those in the second half the *held-out* half, which is what this benchmark
reports unless told otherwise. One row per (mode, work, deadline, overhead): greedy,
Uniform Progress, ours (``deadline_aware``), the optimum, the share of the gap from the
better baseline to the optimum that ours closes, and deadline misses.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_spot_training.core.policies import POLICIES, DeadlineAwarePolicy, make_policy  # noqa: E402
from airflow_spot_training.core.policy import Action, Capacity, Decision, Event, JobState  # noqa: E402
from airflow_spot_training.core.policies.slack import safety_margin  # noqa: E402
from airflow_spot_training.simulate.optimum import optimal_cost  # noqa: E402
from airflow_spot_training.simulate.simulator import on_demand_only_cost, simulate  # noqa: E402
from airflow_spot_training.simulate.traces import find_traces, load_trace, traces_dir  # noqa: E402

SETTINGS = [(48, 52), (48, 60), (48, 70), (8, 10), (8, 16)]  # (work hours, deadline hours)
OVERHEADS = [0.1, 0.2]  # restart overhead, hours
MIN_STEP = 120  # seconds: finer traces are resampled to a whole multiple of their gap >= this
HALVES = ("tuning", "held-out")
OURS = "deadline_aware"
BASELINES = ("greedy", "uniform_progress")
DOCS = ROOT / "docs" / "escalation-policies.md"
DOCS_PLOT = ROOT / "docs" / "images" / "escalation_policies.png"
TABLE_START, TABLE_END = "<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->"


LOOKAHEAD = "ours + look-ahead"


class LookaheadHints:
    """Analysis only, not a policy anyone can run: ``deadline_aware`` told two facts from the
    trace's future at every decision.

    1. When it would launch on-demand because spot is gone, it learns how long the outage
       will last, and waits instead if spot returns within one restart overhead.
    2. When it would move an on-demand attempt back to spot, it learns how long spot will
       stay, and stays on on-demand if that is less than two restart overheads.

    If these hints do not close the gap to the offline optimum, the gap is not in the
    local decisions (wait or bridge an outage, move back or not) but in where the whole
    window's slack is best spent, which only knowledge of the rest of the trace tells.

    :param pools: the job's availability windows, one per pool.
    :param gap_seconds: the step.
    """

    def __init__(self, pools: list[list[bool]], gap_seconds: float) -> None:
        self.policy = DeadlineAwarePolicy()
        self.any_spot = [any(pool[i] for pool in pools) for i in range(min(map(len, pools)))]
        self.gap = gap_seconds

    def _run_from(self, now: float, available: bool) -> float:
        """Seconds from ``now`` until spot availability (anywhere) changes."""
        step = int(round(now / self.gap))
        length = 0
        while step + length < len(self.any_spot) and self.any_spot[step + length] is available:
            length += 1
        return length * self.gap

    def decide(self, state: JobState) -> Decision:
        decision = self.policy.decide(state)
        on_demand = state.current_capacity is Capacity.ON_DEMAND and state.event in (Event.TICK, Event.FAILED)
        if on_demand and decision.action is Action.SPOT:
            if self._run_from(state.now, True) < 2 * state.restart_overhead:
                return Decision(Action.ON_DEMAND, "hint: spot will not stay")
        elif decision.action is Action.ON_DEMAND and not on_demand and not state.spot_available:
            outage = self._run_from(state.now, False)
            if outage <= state.restart_overhead and state.slack - outage >= safety_margin(state):
                return Decision(Action.WAIT, "hint: spot is back within one restart")
        return decision


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


def start_offsets(n_samples: int, half: str, count: int) -> list[int]:
    """``count`` evenly spaced start samples inside one half of a trace of ``n_samples``.

    The tuning half starts jobs in the first half of the trace, the held-out half in the
    second; deterministic, so every run and every reader sees the same split.
    """
    size = n_samples // 2
    first = 0 if half == "tuning" else size
    return [first + i * size // count for i in range(count)]


def run_case(args: tuple) -> list[dict]:
    """All offsets x overheads x settings for one trace group; one row per job and policy."""
    label, traces, n_offsets, mode, half, lookahead = args
    gap = traces[0].gap_seconds
    rows = []
    for start in start_offsets(min(len(t.available) for t in traces), half, n_offsets):
        for overhead_h in OVERHEADS:
            for task_h, deadline_h in SETTINGS:
                task, deadline, overhead = task_h * 3600, deadline_h * 3600, overhead_h * 3600
                length = int(math.ceil((deadline + task) / gap)) + 4
                pools = [t.window(start, length) for t in traces]
                norm = on_demand_only_cost(task, overhead)
                base = dict(half=half, row=(mode, task_h, deadline_h, overhead_h), case=label, offset=start,
                            optimum=optimal_cost(pools, gap, task, deadline, overhead) / norm)
                policies = [(name, make_policy(name)) for name in POLICIES]
                if lookahead:
                    policies.append((LOOKAHEAD, LookaheadHints(pools, gap)))
                for name, policy in policies:
                    r = simulate(policy, pools, gap, task, deadline, overhead)
                    rows.append(dict(base, policy=name, cost=r.cost / norm, missed=r.missed))
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean cost, optimum, worst cost and misses per (half, row or "all", policy)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["half"], r["row"], r["policy"])].append(r)
        groups[(r["half"], (r["row"][0], "all"), r["policy"])].append(r)
    return {key: dict(n=len(rs), cost=statistics.fmean(r["cost"] for r in rs),
                      optimum=statistics.fmean(r["optimum"] for r in rs),
                      worst=max(r["cost"] for r in rs), misses=sum(r["missed"] for r in rs))
            for key, rs in groups.items()}


def gap_closed(summary: dict, half: str, row: tuple, policy: str = OURS) -> float:
    """Share of the gap from the better baseline to the optimum that ``policy`` closes (1 = optimal)."""
    best = min(summary[(half, row, name)]["cost"] for name in BASELINES)
    cost, optimum = summary[(half, row, policy)]["cost"], summary[(half, row, policy)]["optimum"]
    return (best - cost) / (best - optimum) if best > optimum else 1.0


def table(summary: dict, half: str) -> str:
    """The per-setting Markdown table of one half, one line per (mode, work, deadline, overhead)."""
    lines = [
        "| mode | work h | deadline h | overhead h | jobs | threshold | greedy | uniform progress | **ours** "
        "| optimum | gap closed | ours vs better baseline | misses (all policies) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted({key[1] for key in summary if key[0] == half},
                  key=lambda row: (row[0] != "single", row[1] == "all", row[1:] if row[1] != "all" else ()))
    for row in rows:
        cells = {name: summary[(half, row, name)] for name in POLICIES}
        best = min(cells[name]["cost"] for name in BASELINES)
        ours = cells[OURS]
        misses = sum(c["misses"] for c in cells.values())
        label = [row[0], "all", "", ""] if row[1] == "all" else [row[0], *map(str, row[1:])]
        lines.append(
            f"| {' | '.join(label)} | {ours['n']} | {cells['threshold']['cost']:.3f} | {cells['greedy']['cost']:.3f} "
            f"| {cells['uniform_progress']['cost']:.3f} | **{ours['cost']:.3f}** | {ours['optimum']:.3f} "
            f"| {gap_closed(summary, half, row):.0%} | {ours['cost'] - best:+.3f} | {misses} |"
        )
    return "\n".join(lines)


def lookahead_table(summary: dict, half: str) -> str:
    """Rows where ours closes under half the gap: ours, ours with look-ahead hints, the optimum."""
    rows = sorted((key[1] for key in summary if key[0] == half and key[2] == LOOKAHEAD and key[1][1] != "all"
                   and gap_closed(summary, half, key[1]) < 0.5), key=lambda row: (row[0] != "single", row[1:]))
    lines = [
        "| mode | work h | deadline h | overhead h | better baseline | ours | ours + look-ahead hints | optimum "
        "| gap closed: ours | gap closed: with hints |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        best = min(summary[(half, row, name)]["cost"] for name in BASELINES)
        lines.append(
            f"| {' | '.join(map(str, row))} | {best:.3f} | {summary[(half, row, OURS)]['cost']:.3f} "
            f"| {summary[(half, row, LOOKAHEAD)]['cost']:.3f} | {summary[(half, row, OURS)]['optimum']:.3f} "
            f"| {gap_closed(summary, half, row):.0%} | {gap_closed(summary, half, row, LOOKAHEAD):.0%} |"
        )
    return "\n".join(lines)


def verdict(summary: dict, half: str) -> list[str]:
    """Lines that say, per row, whether ours is at or below the better baseline and closes half the gap."""
    rows = [key[1] for key in summary if key[0] == half and key[2] == OURS and key[1][1] != "all"]
    above = [row for row in rows if summary[(half, row, OURS)]["cost"]
             > min(summary[(half, row, name)]["cost"] for name in BASELINES) + 1e-12]
    short = [row for row in rows if gap_closed(summary, half, row) < 0.5]
    misses = sum(summary[(half, row, name)]["misses"] for row in rows for name in POLICIES)
    fmt = lambda rs: ", ".join(f"{m} {w} h/{d} h/{o} h" for m, w, d, o in sorted(rs)) or "none"  # noqa: E731
    worst = {mode: ", ".join(f"{name} {summary[(half, (mode, 'all'), name)]['worst']:.3f}" for name in POLICIES)
             for mode in sorted({row[0] for row in rows}, key=lambda m: m != "single")}
    return [
        f"{half} half: ours above the better baseline on {len(above)} of {len(rows)} rows: {fmt(above)}",
        f"{half} half: ours closes under half the gap to the optimum on {len(short)} of {len(rows)} rows: {fmt(short)}",
        f"{half} half: deadline misses, all policies: {misses}",
        *(f"{half} half: costliest single job, {mode} pool: {line}" for mode, line in worst.items()),
    ]


def plot(summary: dict, half: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["greedy", "uniform_progress", OURS, "optimum"]
    modes = sorted({key[1][0] for key in summary if key[0] == half}, key=lambda m: m != "single")
    fig, axes = plt.subplots(len(modes), 1, figsize=(13, 4.2 * len(modes)), squeeze=False)
    width = 0.8 / len(names)
    for ax, mode in zip(axes[:, 0], modes):
        rows = sorted({key[1] for key in summary if key[0] == half and key[1][0] == mode and key[1][1] != "all"},
                      key=lambda row: row[1:])
        for j, name in enumerate(names):
            values = [summary[(half, row, OURS)]["optimum"] if name == "optimum" else summary[(half, row, name)]["cost"]
                      for row in rows]
            ax.bar([i + (j - len(names) / 2 + 0.5) * width for i in range(len(rows))], values, width,
                   label="ours (deadline_aware)" if name == OURS else name)
        ax.set_xticks(range(len(rows)), [f"{w} h in {d} h\n{o} h restart" for _, w, d, o in rows], fontsize=8)
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("mean cost / on-demand-only cost")
        ax.set_title(f"{mode} pool, {half} half")
        ax.legend(fontsize=8, loc="lower left", ncols=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_docs(summary: dict, half: str, header: str) -> None:
    """Replace the tables between the benchmark markers of the policies page, and the plot."""
    text = DOCS.read_text()
    body = "\n\n".join([
        header, table(summary, half), "\n".join(f"- {line}" for line in verdict(summary, half)),
        "Where ours closes under half of the gap, the same policy with look-ahead hints from the "
        "trace (`LookaheadHints` in the benchmark: how long the current outage, or the spot window "
        "it would move to, will last):",
        lookahead_table(summary, half),
    ])
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOCS} has no {TABLE_START} ... {TABLE_END} block to rewrite")
    DOCS.write_text(pattern.sub(lambda _: f"{TABLE_START}\n{body}\n{TABLE_END}", text))
    plot(summary, half, DOCS_PLOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=None, help="traces folder (default: shared traces)")
    parser.add_argument("--offsets", type=int, default=24, help="start offsets per trace and half (default 24)")
    parser.add_argument("--quick", action="store_true", help="4 offsets per trace and half")
    parser.add_argument("--half", choices=[*HALVES, "both"], default="held-out",
                        help="which half of the start offsets to run (default held-out)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--single-only", action="store_true", help="skip the multi-pool sweep")
    parser.add_argument("--lookahead", action="store_true",
                        help="also replay ours with look-ahead hints from the trace (analysis, see LookaheadHints)")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the held-out tables and plot in docs/escalation-policies.md (implies --lookahead)")
    args = parser.parse_args(argv)
    if args.update_docs and args.half == "tuning":
        parser.error("--update-docs reports the held-out half; run it with --half held-out or both")
    root = args.traces or traces_dir()
    n_offsets = 4 if args.quick else args.offsets
    halves = list(HALVES) if args.half == "both" else [args.half]
    singles, multis = load_groups(root)
    groups = [(label, ts, "single") for label, ts in singles]
    if not args.single_only:
        groups += [(label, ts, "multi") for label, ts in multis]
    lookahead = args.lookahead or args.update_docs
    cases = [(label, ts, n_offsets, mode, half, lookahead) for half in halves for label, ts, mode in groups]
    started = time.time()
    with Pool(max(1, args.jobs)) as pool:
        rows = [r for chunk in pool.imap_unordered(run_case, cases) for r in chunk]
    summary = summarize(rows)
    jobs = len(rows) // (len(POLICIES) + lookahead)
    header = (f"{len(singles)} traces and {len(multis)} multi-pool groups, {n_offsets} start offsets per trace "
              f"in each half, restart overheads {' and '.join(f'{o:g}' for o in OVERHEADS)} h, "
              f"{len(SETTINGS)} (work, deadline) settings: {jobs // len(halves)} jobs per half, "
              f"each replayed by the {len(POLICIES)} policies and solved for the optimum.")
    print(f"{header}\n{jobs} jobs in {time.time() - started:.0f} s")
    for half in halves:
        print(f"\n### {half} half\n\n{table(summary, half)}\n")
        print("\n".join(verdict(summary, half)))
        if lookahead:
            print(f"\nrows where ours closes under half the gap, with look-ahead hints:\n\n{lookahead_table(summary, half)}")
    out = ROOT / "benchmarks" / "out" / "escalation_policies.png"
    plot(summary, halves[-1], out)
    print(f"\nplot: {out}")
    if args.update_docs:
        update_docs(summary, "held-out", header)
        print(f"updated {DOCS.relative_to(ROOT)} and {DOCS_PLOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
