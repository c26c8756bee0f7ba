"""Replay one job on spot traces: ``python -m airflow_spot_training.simulate --trace PATH ...``.

Prints the cost (USD and normalized to on-demand only), whether the deadline was met,
preemptions and launches, next to the offline optimum. Several ``--trace`` options make
several pools (zones); they must share a gap.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from airflow_spot_training.core.policies import POLICIES, make_policy
from airflow_spot_training.core.policy import check_feasible
from airflow_spot_training.simulate.optimum import optimal_cost
from airflow_spot_training.simulate.simulator import (
    ON_DEMAND_PRICE,
    on_demand_only_cost,
    simulate,
)
from airflow_spot_training.simulate.traces import load_trace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m airflow_spot_training.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", action="append", required=True, help="trace JSON file; repeat for several pools")
    p.add_argument("--task-hours", type=float, required=True, help="hours of work the job needs")
    p.add_argument("--deadline-hours", type=float, required=True, help="hours from start to deadline")
    p.add_argument("--restart-overhead-hours", type=float, default=0.1, help="boot + restore per launch")
    p.add_argument("--checkpoint-interval-hours", type=float, default=0.0, help="0 = continuous")
    p.add_argument("--on-demand-price", type=float, default=ON_DEMAND_PRICE, help="USD per hour")
    p.add_argument("--spot-price", type=float, default=None, help="USD per hour (default: a third of on-demand)")
    p.add_argument("--start-hours", type=float, default=0.0, help="where in the trace the job starts")
    p.add_argument("--step-seconds", type=float, default=None,
                   help="resample the trace to this step (default: the trace gap)")
    p.add_argument("--policy", default=None, choices=sorted(POLICIES), action="append",
                   dest="policies", help="policy to replay; repeat to compare (default deadline_aware)")
    p.add_argument("--policy-kwargs", default="{}", help="JSON constructor kwargs for the policy")
    p.add_argument("--no-optimum", action="store_true", help="skip the offline optimum")
    p.add_argument("--verbose", action="store_true", help="print every decision")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    traces = [load_trace(path, path) for path in args.trace]
    step = args.step_seconds or traces[0].gap_seconds
    traces = [t.resampled(step) for t in traces]
    if len({t.gap_seconds for t in traces}) > 1:
        raise SystemExit("all --trace files must have the same gap (or pass --step-seconds)")
    task, deadline = args.task_hours * 3600, args.deadline_hours * 3600
    overhead, ckpt = args.restart_overhead_hours * 3600, args.checkpoint_interval_hours * 3600
    spot_price = args.spot_price if args.spot_price is not None else args.on_demand_price / 3
    start = int(round(args.start_hours * 3600 / step))
    length = int(math.ceil((deadline + task) / step)) + 4
    pools = [t.window(start, length) for t in traces]
    try:
        norm = on_demand_only_cost(task, overhead, args.on_demand_price)
        check_feasible(task, deadline, overhead)
        names = args.policies or ["deadline_aware"]
        kwargs = json.loads(args.policy_kwargs)
        print(f"job: {args.task_hours:g} h of work due in {args.deadline_hours:g} h, restart overhead "
              f"{args.restart_overhead_hours:g} h, {len(pools)} pool(s), step {step:g} s; "
              f"on-demand only costs {norm:.2f} USD")
        for name in names:
            r = simulate(make_policy(name, **kwargs) if kwargs else make_policy(name), pools, step, task,
                         deadline, overhead, ckpt, spot_price, args.on_demand_price, record=args.verbose)
            if args.verbose:
                for now, event, d in r.decisions:
                    print(f"  {now / 3600:7.2f} h {event:<21} {d.action.value:<9} {d.reason}")
            print(f"{name:>17}: cost {r.cost:8.2f} USD ({r.cost / norm:.3f} of on-demand), "
                  f"{'MISSED the deadline' if r.missed else 'met the deadline'} "
                  f"(done at {r.finish_time / 3600:.2f} h), {r.preemptions} preemption(s), "
                  f"{r.launches} launch(es), {r.spot_seconds / 3600:.1f} h spot, "
                  f"{r.on_demand_seconds / 3600:.1f} h on-demand")
        if not args.no_optimum:
            opt = optimal_cost(pools, step, task, deadline, overhead, spot_price, args.on_demand_price)
            print(f"{'offline optimum':>17}: cost {opt:8.2f} USD ({opt / norm:.3f} of on-demand)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
