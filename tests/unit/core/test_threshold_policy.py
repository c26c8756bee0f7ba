"""The mission's rule through the pure policy interface."""

from __future__ import annotations

import pytest

from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Event,
    JobState,
    ThresholdPolicy,
    deserialize_policy,
    estimate_remaining_work,
    serialize_policy,
)


def state(**kw) -> JobState:
    base = dict(now=1000.0, started_at=0.0, event=Event.PREEMPTED, current_capacity=Capacity.SPOT)
    base.update(kw)
    return JobState(**base)


class TestThresholdPolicy:
    def test_starts_on_spot(self):
        d = ThresholdPolicy(max_preemptions=2).decide(state(event=Event.START, current_capacity=None))
        assert d.action is Action.SPOT

    def test_escalates_at_the_threshold(self):
        p = ThresholdPolicy(max_preemptions=2)
        assert p.decide(state(preemptions=1)).action is Action.SPOT
        d = p.decide(state(preemptions=2))
        assert d.action is Action.ON_DEMAND and "max_preemptions=2" in d.reason

    def test_zero_threshold_means_on_demand_from_the_start(self):
        d = ThresholdPolicy(max_preemptions=0).decide(state(event=Event.START, current_capacity=None))
        assert d.action is Action.ON_DEMAND

    def test_stays_on_demand_once_escalated(self):
        d = ThresholdPolicy(max_preemptions=5).decide(state(event=Event.FAILED, current_capacity=Capacity.ON_DEMAND))
        assert d.action is Action.ON_DEMAND

    def test_deadline_escalates_before_it_cannot_absorb_a_preemption(self):
        p = ThresholdPolicy(max_preemptions=None)
        # 600 s of work left, 100 s restart: needs 600 + 100 + 100 (one more preemption) = 800 s
        assert p.decide(state(deadline=1000.0 + 801, remaining_work=600, restart_overhead=100)).action is Action.SPOT
        d = p.decide(state(deadline=1000.0 + 799, remaining_work=600, restart_overhead=100))
        assert d.action is Action.ON_DEMAND and "cannot absorb another preemption" in d.reason

    def test_deadline_counts_lost_work_per_preemption(self):
        p = ThresholdPolicy(max_preemptions=None)
        s = state(deadline=1000.0 + 850, remaining_work=600, restart_overhead=100, checkpoint_interval=100)
        assert p.decide(s).action is Action.ON_DEMAND

    def test_unknown_work_escalates_only_near_the_deadline(self):
        p = ThresholdPolicy(max_preemptions=None)
        assert p.decide(state(deadline=1000.0 + 500, restart_overhead=100)).action is Action.SPOT
        assert p.decide(state(deadline=1000.0 + 150, restart_overhead=100)).action is Action.ON_DEMAND

    def test_waits_for_spot_capacity_within_the_slack(self):
        p = ThresholdPolicy(max_preemptions=3, wait_seconds=60)
        d = p.decide(state(event=Event.CAPACITY_UNAVAILABLE, spot_unavailable=True))
        assert d.action is Action.WAIT and d.wait_seconds == 60
        d = p.decide(state(event=Event.CAPACITY_UNAVAILABLE, spot_unavailable=True, deadline=1000.0 + 830,
                           remaining_work=600, restart_overhead=100))
        assert d.action is Action.WAIT and d.wait_seconds == pytest.approx(30)

    def test_negative_threshold_is_refused(self):
        with pytest.raises(ValueError, match="max_preemptions must be 0 or more"):
            ThresholdPolicy(max_preemptions=-1)

    def test_serialize_round_trip(self):
        classpath, kwargs = serialize_policy(ThresholdPolicy(max_preemptions=4, wait_seconds=5))
        again = deserialize_policy(classpath, kwargs)
        assert serialize_policy(again) == (classpath, kwargs)


class TestEstimateRemainingWork:
    def test_from_progress(self):
        assert estimate_remaining_work(0.25, 100.0, None) == pytest.approx(300.0)

    def test_from_expected_runtime(self):
        # no progress committed: nothing spent so far is known to be kept
        assert estimate_remaining_work(None, 100.0, 400.0) == 400.0
        assert estimate_remaining_work(0.0, 0.0, 400.0) == 400.0
        assert estimate_remaining_work(0.5, 0.0, 400.0) == 200.0

    def test_the_larger_estimate_wins(self):
        assert estimate_remaining_work(0.5, 1000.0, 400.0) == 1000.0
        assert estimate_remaining_work(0.5, 100.0, 400.0) == 200.0

    def test_unknown(self):
        assert estimate_remaining_work(None, 100.0, None) is None
