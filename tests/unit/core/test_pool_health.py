"""The pool health rule: cool-down after a reclaim or a capacity miss, then longest uptime first."""

from __future__ import annotations

import pytest

from airflow_spot_training.core.attempt import AttemptState
from airflow_spot_training.core.ledger import AttemptRecord, RunLedger
from airflow_spot_training.core.pool_health import (
    KEEP_PER_POOL,
    PoolEvent,
    PoolHealthRule,
    PoolObservation,
    in_order,
)

POOLS = ["a", "b", "c"]
RULE = PoolHealthRule(cooldown=1800, window=6 * 3600)
NOW = 100_000.0


def seen(pool: str, ago: float, event: PoolEvent = PoolEvent.RECLAIMED) -> PoolObservation:
    return PoolObservation(pool, event, NOW - ago)


class TestRank:
    def test_without_observations_the_ladder_order_is_kept(self):
        ranking = RULE.rank(POOLS, [], NOW)
        assert ranking.order == POOLS and not ranking.reordered
        assert ranking.reason == "a first, the ladder's order"

    def test_a_pool_that_just_reclaimed_an_attempt_is_tried_last_for_the_cooldown(self):
        ranking = RULE.rank(POOLS, [seen("a", 300)], NOW)
        assert ranking.order == ["b", "c", "a"]
        assert ranking.reason == ("b first: no reclaim or capacity miss in the window; a: reclaimed an attempt "
                                  "5 min ago, cooling down for 25 min more")

    def test_a_capacity_miss_cools_a_pool_down_too(self):
        ranking = RULE.rank(POOLS, [seen("b", 60, PoolEvent.NO_CAPACITY)], NOW)
        assert ranking.order == ["a", "c", "b"]
        assert "b: had no capacity 60 s ago, cooling down for 29 min more" in ranking.reason

    def test_after_the_cooldown_a_pool_still_ranks_below_pools_without_trouble(self):
        ranking = RULE.rank(POOLS, [seen("a", 3 * 3600)], NOW)
        assert ranking.order == ["b", "c", "a"]
        assert not ranking.standings[-1].cooling and ranking.standings[-1].uptime == 3 * 3600

    def test_the_longest_uptime_wins_among_troubled_pools(self):
        ranking = RULE.rank(POOLS, [seen("a", 2 * 3600), seen("b", 4 * 3600), seen("c", 3600)], NOW)
        assert ranking.order == ["b", "a", "c"]
        assert ranking.reason.startswith("b first: longest uptime (4.0 h)")

    def test_when_every_pool_cools_the_one_whose_cooldown_ends_first_leads(self):
        ranking = RULE.rank(POOLS, [seen("a", 100), seen("b", 1000), seen("c", 10)], NOW)
        assert ranking.order == ["b", "a", "c"] and all(s.cooling for s in ranking.standings)

    def test_the_newest_observation_of_a_pool_counts_and_old_ones_are_forgotten(self):
        ranking = RULE.rank(POOLS, [seen("a", 7 * 3600), seen("b", 5000), seen("b", 100)], NOW)
        assert ranking.order == ["a", "c", "b"]  # a's reclaim is outside the window
        assert ranking.standings[-1].trouble == seen("b", 100)

    def test_pools_outside_the_ladder_are_ignored(self):
        assert RULE.rank(["a", "b"], [seen("z", 10)], NOW).order == ["a", "b"]

    def test_bad_settings_are_refused(self):
        with pytest.raises(ValueError):
            PoolHealthRule(cooldown=-1)


class TestObservations:
    def test_round_trip(self):
        observation = seen("a", 10, PoolEvent.NO_CAPACITY)
        assert PoolObservation.from_dict(observation.to_dict()) == observation

    def test_recent_keeps_the_window_and_the_newest_per_pool_without_duplicates(self):
        many = [seen("a", float(i)) for i in range(KEEP_PER_POOL + 5)]
        kept = RULE.recent(many + many + [seen("b", 7 * 3600)], NOW)
        assert len(kept) == KEEP_PER_POOL and {o.pool for o in kept} == {"a"}
        assert kept[-1] == seen("a", 0.0)

    def test_the_ledger_reports_its_own_reclaims_and_misses(self):
        ledger = RunLedger(run_key="k", checkpoint_prefix="/ck")
        ledger.attempts = [
            AttemptRecord(1, "spot", "t1", 1, outcome=AttemptState.PREEMPTED, pool="a", launched_at=10.0,
                          ended_at=50.0, pools_without_capacity=["c"]),
            AttemptRecord(2, "spot", "t2", 1, outcome=AttemptState.SUCCEEDED, pool="b", launched_at=60.0,
                          ended_at=90.0),
        ]
        assert ledger.pool_observations() == [PoolObservation("a", PoolEvent.RECLAIMED, 50.0),
                                              PoolObservation("c", PoolEvent.NO_CAPACITY, 10.0)]


def test_in_order_keeps_unnamed_items_after_the_named_ones():
    assert in_order(["a", "b", "c", "d"], ["c", "a"], str) == ["c", "a", "b", "d"]
    assert in_order(["a", "b"], [], str) == ["a", "b"]
