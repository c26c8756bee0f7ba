"""Replay spot traces through an escalation policy, the way the operator drives it.

Time advances in steps of the trace gap. At every step the simulator builds a
:class:`JobState` and asks the policy, with the same events the operator uses:
``START`` before the first launch, ``PREEMPTED`` when the trace takes a running spot
instance away, ``CAPACITY_UNAVAILABLE`` when a spot launch fails (asked again at once),
and ``TICK`` while an attempt runs or the job waits; it also says whether spot is
available somewhere now and for how long it has been (``spot_available_for``), as a
caller polling every step would see it. Its answer is applied:

* ``SPOT``: keep a running spot instance; otherwise stop whatever runs (after a
  checkpoint) and launch spot. Which pool, by ``pools_by``: ``"sticky"`` (the default),
  the pool that held the last spot instance if it has capacity, else the first pool that
  has; ``"ladder"``, the first pool with capacity in the given order (what the operator
  does without pool health); a :class:`~airflow_spot_training.core.pool_health.PoolHealthRule`,
  the pools in the order the rule ranks them from the job's own reclaims and capacity
  misses (pool health, the operator's rule), every pool tried without capacity noted as
  a miss. Without capacity anywhere the policy is asked again with ``CAPACITY_UNAVAILABLE``.
* ``ON_DEMAND``: keep a running on-demand instance; otherwise stop and launch one.
* ``WAIT``: stop whatever runs (after a checkpoint) and wait one step.

Every launch pays ``restart_overhead`` (boot plus checkpoint restore) before work
progresses; a preemption loses the work since the last checkpoint (checkpoints every
``checkpoint_interval`` seconds of work, 0 = continuous). A running instance is billed
per second, overhead included, until the work is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from typing import Literal

from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Decision,
    EscalationPolicy,
    Event,
    JobState,
    check_feasible,
)
from airflow_spot_training.core.pool_health import PoolEvent, PoolHealthRule, PoolObservation

ON_DEMAND_PRICE = 3.06  # USD per hour, p3.2xlarge
SPOT_PRICE = ON_DEMAND_PRICE / 3


@dataclass
class SimResult:
    """What one replay cost and whether it met the deadline. Times are seconds."""

    cost: float
    finished: bool
    finish_time: float
    deadline: float
    preemptions: int = 0
    launches: int = 0
    spot_seconds: float = 0.0
    on_demand_seconds: float = 0.0
    moves_to_spot: int = 0
    decisions: list[tuple[float, str, Decision]] = field(default_factory=list)
    #: the pool of every spot launch, in order
    spot_pools: list[int] = field(default_factory=list)

    @property
    def missed(self) -> bool:
        return not self.finished or self.finish_time > self.deadline + 1e-6


def simulate(
    policy: EscalationPolicy,
    pools: Sequence[Sequence[bool]],
    gap_seconds: float,
    task_seconds: float,
    deadline_seconds: float,
    restart_overhead: float = 0.0,
    checkpoint_interval: float = 0.0,
    spot_price: float = SPOT_PRICE,
    on_demand_price: float = ON_DEMAND_PRICE,
    poll_interval: float | None = None,
    record: bool = False,
    pools_by: Literal["sticky", "ladder"] | PoolHealthRule = "sticky",
    pool_observations: list[PoolObservation] | None = None,
    clock_start: float = 0.0,
) -> SimResult:
    """Replay one job on one window of traces.

    :param policy: the escalation policy under test.
    :param pools: one availability sequence per pool (zone), sample ``i`` covering the step
        ``[i * gap, (i + 1) * gap)`` from the job's start. Past their end spot counts as
        unavailable.
    :param gap_seconds: step length.
    :param task_seconds: seconds of work the job needs.
    :param deadline_seconds: seconds from the start to the deadline.
    :param restart_overhead: seconds each launch costs before work progresses.
    :param checkpoint_interval: seconds of work between checkpoints (0 = continuous).
    :param spot_price: USD per hour on spot.
    :param on_demand_price: USD per hour on on-demand.
    :param poll_interval: told to the policy as ``JobState.poll_interval``; defaults to the
        step, which is how often the simulator asks.
    :param record: keep every decision in :attr:`SimResult.decisions`.
    :param pools_by: how a spot launch picks its pool (see the module docstring).
    :param pool_observations: with a pool health rule, the observations it ranks from and adds
        to; pass one list to several jobs to simulate a fleet that shares them (the operator's
        Variables). Default: the job's own only.
    :param clock_start: the job's start on the fleet's clock (observations are stamped with
        ``clock_start + t``; a job never sees observations later than its own now).
    """
    check_feasible(task_seconds, deadline_seconds, restart_overhead)
    if not pools:
        raise ValueError("give at least one pool of spot availability")
    gap = float(gap_seconds)
    poll = gap if poll_interval is None else poll_interval
    n_pools = len(pools)
    lengths = [len(p) for p in pools]
    # generous cap: a policy that misses still finishes, so its cost is comparable
    max_steps = int(math.ceil((deadline_seconds + task_seconds + 4 * restart_overhead) / gap)) + 2
    price = {Capacity.SPOT: spot_price / 3600.0, Capacity.ON_DEMAND: on_demand_price / 3600.0}

    def avail(pool: int, step: int) -> bool:
        return step < lengths[pool] and bool(pools[pool][step])

    res = SimResult(cost=0.0, finished=False, finish_time=math.inf, deadline=deadline_seconds)
    progress = 0.0  # seconds of work done and not lost
    unsaved = 0.0  # work since the last checkpoint
    running: Capacity | None = None
    pool_of_spot: int | None = None
    last_spot_pool = 0
    overhead_left = 0.0
    attempts = 0
    spot_wait = 0.0
    spot_unavailable = False
    spot_seen_since: float | None = None  # start of the current run of steps with spot somewhere
    event = Event.START
    picker = PoolPicker(pools_by, n_pools, pool_observations, clock_start)

    def state_at(now: float, ev: Event, any_spot: bool) -> JobState:
        return JobState(
            now=now,
            started_at=0.0,
            deadline=deadline_seconds,
            attempts=attempts,
            preemptions=res.preemptions,
            event=ev,
            current_capacity=running if running is not None else (Capacity.SPOT if ev is Event.PREEMPTED else None),
            progress=progress / task_seconds if task_seconds else 1.0,
            remaining_work=max(0.0, task_seconds - progress),
            restart_overhead=restart_overhead,
            checkpoint_interval=checkpoint_interval,
            spot_unavailable=spot_unavailable,
            spot_wait=spot_wait,
            spot_available=any_spot,
            spot_available_for=None if spot_seen_since is None else now - spot_seen_since,
            total_work=task_seconds,
            poll_interval=poll,
        )

    for step in range(max_steps):
        now = step * gap
        free_pools = [k for k in range(n_pools) if avail(k, step)]
        any_spot = bool(free_pools)
        if not any_spot:
            spot_seen_since = None
        elif spot_seen_since is None:
            spot_seen_since = now
        if running is Capacity.SPOT and not avail(pool_of_spot, step):  # type: ignore[arg-type]
            picker.reclaimed(pool_of_spot, now)  # type: ignore[arg-type]
            res.preemptions += 1
            progress -= unsaved
            unsaved = 0.0
            running, pool_of_spot = None, None
            event = Event.PREEMPTED
        elif running is not None:
            event = Event.TICK

        decision = policy.decide(state_at(now, event, any_spot))
        if record:
            res.decisions.append((now, event.value, decision))
        action = decision.action
        if action is Action.SPOT and running is not Capacity.SPOT:
            was_on_demand = running is Capacity.ON_DEMAND
            running, unsaved = None, 0.0  # checkpoint and stop whatever ran
            if free_pools:
                pool = picker.pick(free_pools, last_spot_pool, now)
                res.spot_pools.append(pool)
                running, pool_of_spot, last_spot_pool = Capacity.SPOT, pool, pool
                overhead_left, attempts, spot_unavailable = restart_overhead, attempts + 1, False
                res.launches += 1
                res.moves_to_spot += was_on_demand
            else:
                spot_unavailable = True
                retry = policy.decide(state_at(now, Event.CAPACITY_UNAVAILABLE, any_spot))
                if record:
                    res.decisions.append((now, Event.CAPACITY_UNAVAILABLE.value, retry))
                action = Action.WAIT if retry.action is Action.SPOT else retry.action
        if action is Action.ON_DEMAND and running is not Capacity.ON_DEMAND:
            running, unsaved = Capacity.ON_DEMAND, 0.0
            overhead_left, attempts = restart_overhead, attempts + 1
            res.launches += 1
        elif action is Action.WAIT:
            running, unsaved = None, 0.0

        if running is None:
            spot_wait += gap
            event = Event.CAPACITY_UNAVAILABLE if not any(avail(k, step + 1) for k in range(n_pools)) else Event.TICK
            spot_unavailable = event is Event.CAPACITY_UNAVAILABLE
            continue
        # run one step: overhead first, then work
        spend = min(gap, overhead_left)
        overhead_left -= spend
        work = gap - spend
        billed = gap
        if progress + work >= task_seconds:
            work = task_seconds - progress
            billed = spend + work
            res.finished, res.finish_time = True, now + billed
        progress += work
        if checkpoint_interval > 0:
            unsaved = (unsaved + work) % checkpoint_interval
        res.cost += price[running] * billed
        if running is Capacity.SPOT:
            res.spot_seconds += billed
        else:
            res.on_demand_seconds += billed
        if res.finished:
            break
    return res


class PoolPicker:
    """Which pool a simulated spot launch lands in, and what pool health learns on the way."""

    def __init__(self, pools_by: Literal["sticky", "ladder"] | PoolHealthRule, n_pools: int,
                 observations: list[PoolObservation] | None = None, clock_start: float = 0.0) -> None:
        if not isinstance(pools_by, PoolHealthRule) and pools_by not in ("sticky", "ladder"):
            raise ValueError(f"pools_by={pools_by!r}: give 'sticky', 'ladder' or a PoolHealthRule")
        self.pools_by = pools_by
        self.names = [str(k) for k in range(n_pools)]
        self.observations: list[PoolObservation] = [] if observations is None else observations
        self.clock_start = clock_start

    def reclaimed(self, pool: int, now: float) -> None:
        self.observations.append(PoolObservation(str(pool), PoolEvent.RECLAIMED, self.clock_start + now))

    def pick(self, free_pools: list[int], last_spot_pool: int, now: float) -> int:
        if self.pools_by == "sticky":
            return last_spot_pool if last_spot_pool in free_pools else free_pools[0]
        if self.pools_by == "ladder":
            return free_pools[0]
        assert isinstance(self.pools_by, PoolHealthRule)
        now += self.clock_start
        for name in self.pools_by.rank(self.names, self.observations, now).order:
            if int(name) in free_pools:
                return int(name)
            self.observations.append(PoolObservation(name, PoolEvent.NO_CAPACITY, now))
        raise AssertionError("pick() needs a free pool")


def on_demand_only_cost(task_seconds: float, restart_overhead: float,
                        on_demand_price: float = ON_DEMAND_PRICE) -> float:
    """Cost of running the whole job on one on-demand instance: the normalizer."""
    return on_demand_price * (task_seconds + restart_overhead) / 3600.0
