"""The offline optimum: the cheapest schedule with full knowledge of the trace.

Dynamic programming over time steps. Because a step either makes progress (an instance
is up and past its restart overhead) or adds to the *lag* (time not spent working:
waiting, or paying a restart), progress at step ``t`` is ``t * gap - lag``. The state is
(what runs: nothing, on-demand, or spot in pool k; lag), and the lag never exceeds the
slack ``deadline - task``, so the table is small even for long jobs. Lag is kept in
units of ``gcd(gap, restart overhead)`` seconds, exactly.

It is a lower bound for every online policy in :mod:`.simulator`: the same billing, the
same restart overhead, but it may stop an instance at any step with its work saved, so
preemptions never lose work (with ``checkpoint_interval > 0`` the bound is loose by up
to that loss, never wrong).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from airflow_spot_training.core.policy import check_feasible
from airflow_spot_training.simulate.simulator import ON_DEMAND_PRICE, SPOT_PRICE

INF = float("inf")


def _shift(x: np.ndarray, by: int) -> np.ndarray:
    out = np.full_like(x, INF)
    if by < len(x):
        out[by:] = x[: len(x) - by]
    return out


def optimal_cost(
    pools: Sequence[Sequence[bool]],
    gap_seconds: float,
    task_seconds: float,
    deadline_seconds: float,
    restart_overhead: float = 0.0,
    spot_price: float = SPOT_PRICE,
    on_demand_price: float = ON_DEMAND_PRICE,
) -> float:
    """Minimum cost (USD) to finish ``task_seconds`` of work by ``deadline_seconds``.

    Times are rounded to whole seconds. ``pools`` as in :func:`.simulator.simulate`.
    """
    check_feasible(task_seconds, deadline_seconds, restart_overhead)
    gap, work, deadline, overhead = (int(round(v)) for v in
                                     (gap_seconds, task_seconds, deadline_seconds, restart_overhead))
    if work == 0:
        return 0.0
    q = math.gcd(gap, overhead) if overhead else gap
    n_lag = (deadline - work) // q + 1
    steps = int(math.ceil(deadline / gap))
    idle_lag, launch_lag = gap // q, overhead // q
    launch_steps = int(math.ceil(overhead / gap))
    partial = launch_steps * gap - overhead  # work done in the last overhead step
    od_rate, spot_rate = on_demand_price / 3600.0, spot_price / 3600.0

    # run[k][t]: consecutive available steps in pool k starting at step t
    horizon = steps + launch_steps + 1
    runs = []
    for pool in pools:
        run = [0] * (horizon + 1)
        for t in range(horizon - 1, -1, -1):
            run[t] = run[t + 1] + 1 if t < len(pool) and pool[t] else 0
        runs.append(run)

    lag_seconds = np.arange(n_lag, dtype=float) * q
    idle = np.full(n_lag, INF)
    idle[0] = 0.0
    od = np.full(n_lag, INF)
    spot = [np.full(n_lag, INF) for _ in pools]
    pending: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
    best = INF
    for t in range(steps):
        if t in pending:
            p_od, p_spot = pending.pop(t)
            od = np.minimum(od, p_od)
            spot = [np.minimum(s, p) for s, p in zip(spot, p_spot)]
        anything = np.minimum.reduce([idle, od, *spot])  # any state may stop for free
        remaining = work - (t * gap - lag_seconds)
        free = [run[t] > 0 for run in runs]
        if overhead == 0:
            od = np.minimum(od, anything)
            spot = [np.minimum(s, anything) if f else s for s, f in zip(spot, free)]
        else:
            finish_in_overhead = remaining <= partial
            if finish_in_overhead.any():
                cost_od = anything + od_rate * (overhead + remaining)
                best = min(best, float(np.min(np.where(finish_in_overhead, cost_od, INF))))
                need = np.ceil((overhead + remaining) / gap)
                for run in runs:
                    ok = finish_in_overhead & (need <= run[t])
                    if ok.any():
                        best = min(best, float(np.min(np.where(ok, anything + spot_rate * (overhead + remaining), INF))))
            if t + launch_steps < steps:
                source = np.where(finish_in_overhead, INF, anything)
                arrive = _shift(source, launch_lag)
                p_od, p_spot = pending.setdefault(
                    t + launch_steps, (np.full(n_lag, INF), [np.full(n_lag, INF) for _ in pools])
                )
                np.minimum(p_od, arrive + od_rate * launch_steps * gap, out=p_od)
                for k, run in enumerate(runs):
                    if run[t] >= launch_steps:
                        np.minimum(p_spot[k], arrive + spot_rate * launch_steps * gap, out=p_spot[k])
        # one step of work for instances that are up
        last = remaining <= gap
        if last.any():
            best = min(best, float(np.min(np.where(last, od + od_rate * remaining, INF))))
        new_od = np.where(last, INF, od + od_rate * gap)
        new_spot = []
        for s, f in zip(spot, free):
            if not f:
                new_spot.append(np.full(n_lag, INF))
                continue
            if last.any():
                best = min(best, float(np.min(np.where(last, s + spot_rate * remaining, INF))))
            new_spot.append(np.where(last, INF, s + spot_rate * gap))
        idle = _shift(anything, idle_lag)
        od, spot = new_od, new_spot
    return best
