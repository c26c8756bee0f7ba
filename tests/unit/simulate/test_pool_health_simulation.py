"""The simulator picks pools with the operator's pool health rule."""

from __future__ import annotations

import pytest

from airflow_spot_training.core.policies import make_policy
from airflow_spot_training.core.pool_health import PoolHealthRule
from airflow_spot_training.simulate.simulator import simulate

GAP = 60.0
TASK = 2 * 3600.0
DEADLINE = 6 * 3600.0
OVERHEAD = 120.0
STEPS = 600


def flapping(period: int, down: int, steps: int = STEPS) -> list[bool]:
    """Available, except the last ``down`` steps of every ``period``."""
    return [step % period < period - down for step in range(steps)]


def run(pools, pools_by):
    return simulate(make_policy("greedy"), pools, GAP, TASK, DEADLINE, OVERHEAD, pools_by=pools_by)


def test_after_a_reclaim_the_pool_without_trouble_is_chosen_over_the_flapping_first_one():
    flaps = flapping(period=20, down=1)  # the first pool reclaims every 20 minutes
    once = [step != 30 for step in range(STEPS)]  # the second reclaims once, at minute 30
    pools = [flaps, once, [True] * STEPS]
    ladder = run(pools, "ladder")
    health = run(pools, PoolHealthRule(cooldown=3600, window=6 * 3600))
    # the ladder goes back to the first pool with capacity: the flapping one
    assert ladder.spot_pools == [0, 1, 0, 1] and ladder.preemptions == 3
    # pool health leaves both troubled pools alone for the third, which never had trouble
    assert health.spot_pools == [0, 1, 2] and health.preemptions == 2
    assert health.cost < ladder.cost and not health.missed


def test_a_cooling_pool_is_still_used_when_it_is_the_only_one_with_capacity():
    pools = [flapping(period=30, down=2), [False] * 5 + [True] * 3 + [False] * (STEPS - 8)]
    health = run(pools, PoolHealthRule(cooldown=3600, window=6 * 3600))
    assert health.finished and 0 in health.spot_pools[1:]


def test_sticky_stays_in_the_pool_of_the_last_spot_instance():
    pools = [[True] * STEPS, [True] * STEPS]
    assert run(pools, "sticky").spot_pools == [0]


def test_an_unknown_pool_choice_is_refused():
    with pytest.raises(ValueError, match="pools_by='random'"):
        run([[True] * STEPS], "random")
