from __future__ import annotations

import json

import pytest

from airflow_spot_training.core.policies import (
    POLICIES,
    DeadlineAwarePolicy,
    GreedyPolicy,
    ThresholdPolicy,
    UniformProgressPolicy,
    make_policy,
)
from airflow_spot_training.core.policy import (
    Action,
    Capacity,
    Event,
    JobState,
    check_feasible,
    deserialize_policy,
    serialize_policy,
)

H = 3600.0


def state(**kw) -> JobState:
    """A 10 h job due in 14 h, 6 min restarts, asked every 2 min; override what the test needs."""
    base = dict(now=0.0, started_at=0.0, deadline=14 * H, remaining_work=10 * H, total_work=10 * H,
                restart_overhead=0.1 * H, poll_interval=120.0, spot_available=True)
    base.update(kw)
    return JobState(**base)


class TestCheckFeasible:
    def test_feasible_deadline_passes(self):
        check_feasible(10 * H, 10 * H + 360, 360)

    def test_deadline_tighter_than_task_names_the_numbers(self):
        with pytest.raises(ValueError, match=r"infeasible deadline: 9\.0 h .*10\.0 h of work .*6\.0 min"):
            check_feasible(10 * H, 9 * H, 360)

    def test_overhead_counts(self):
        with pytest.raises(ValueError, match="infeasible"):
            check_feasible(10 * H, 10 * H + 100, 360)


class TestRegistry:
    @pytest.mark.parametrize("name", list(POLICIES))
    def test_serialize_round_trip(self, name):
        policy = make_policy(name)
        classpath, kwargs = serialize_policy(policy)
        json.dumps(kwargs)
        rebuilt = deserialize_policy(classpath, kwargs)
        assert serialize_policy(rebuilt) == (classpath, kwargs)

    def test_make_policy_passes_kwargs(self):
        assert make_policy("threshold", max_preemptions=2).max_preemptions == 2

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="unknown escalation policy 'nope'"):
            make_policy("nope")

    def test_default_is_deadline_aware(self):
        assert isinstance(make_policy(), DeadlineAwarePolicy)


class TestGreedyPolicy:
    def test_spot_when_available(self):
        assert GreedyPolicy().decide(state()).action is Action.SPOT

    def test_waits_for_spot_while_slack_lasts(self):
        d = GreedyPolicy().decide(state(spot_available=False, event=Event.CAPACITY_UNAVAILABLE))
        assert d.action is Action.WAIT
        assert 0 < d.wait_seconds <= 60

    def test_on_demand_once_slack_is_gone(self):
        # slack = 14 - 13.95 - 0.1 h < one restart + poll
        d = GreedyPolicy().decide(state(remaining_work=13.85 * H, spot_available=True))
        assert d.action is Action.ON_DEMAND

    def test_never_moves_back(self):
        d = GreedyPolicy().decide(state(event=Event.TICK, current_capacity=Capacity.ON_DEMAND))
        assert d.action is Action.ON_DEMAND

    def test_tick_on_spot_continues(self):
        d = GreedyPolicy().decide(state(event=Event.TICK, current_capacity=Capacity.SPOT))
        assert d.action is Action.SPOT


class TestUniformProgressPolicy:
    def test_behind_the_line_without_spot_runs_on_demand(self):
        # 7 h elapsed, 2 h done: the line says 5 h
        s = state(now=7 * H, remaining_work=8 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
        assert UniformProgressPolicy().decide(s).action is Action.ON_DEMAND

    def test_ahead_of_the_line_without_spot_waits(self):
        s = state(now=2 * H, remaining_work=7 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
        assert UniformProgressPolicy().decide(s).action is Action.WAIT

    def test_spot_even_when_behind(self):
        s = state(now=3 * H, remaining_work=9 * H, spot_available=True, event=Event.PREEMPTED,
                  current_capacity=Capacity.SPOT)
        assert UniformProgressPolicy().decide(s).action is Action.SPOT

    def test_hysteresis_keeps_on_demand_until_ahead_of_the_line(self):
        # on the line exactly: 7 h elapsed, 5 h done; the line 12 min ahead is higher
        s = state(now=7 * H, remaining_work=5 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND)
        assert UniformProgressPolicy().decide(s).action is Action.ON_DEMAND
        ahead = state(now=7 * H, remaining_work=4 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND)
        assert UniformProgressPolicy().decide(ahead).action is Action.SPOT

    def test_safety_net(self):
        s = state(now=4 * H, remaining_work=9.85 * H, spot_available=True)
        assert UniformProgressPolicy().decide(s).action is Action.ON_DEMAND


class TestDeadlineAwarePolicy:
    def test_spot_when_available(self):
        assert DeadlineAwarePolicy().decide(state()).action is Action.SPOT

    def test_waits_while_slack_is_above_the_reserve(self):
        s = state(now=1 * H, remaining_work=9 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
        assert DeadlineAwarePolicy().decide(s).action is Action.WAIT

    def test_on_demand_when_slack_reaches_the_reserve(self):
        s = state(now=3 * H, remaining_work=9 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
        policy = DeadlineAwarePolicy()
        assert s.slack < policy.reserve(s)
        assert policy.decide(s).action is Action.ON_DEMAND

    def test_reserve_shrinks_to_the_margin_at_the_deadline(self):
        policy = DeadlineAwarePolicy()
        early, late = policy.reserve(state(now=0)), policy.reserve(state(now=14 * H))
        assert early > late == pytest.approx(0.1 * H + 120)

    def test_moves_back_to_spot_when_slack_allows(self):
        s = state(now=5 * H, remaining_work=6 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND)
        assert DeadlineAwarePolicy().decide(s).action is Action.SPOT

    def test_stays_on_demand_when_moving_back_is_unsafe(self):
        s = state(now=5 * H, remaining_work=8.7 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND)
        assert DeadlineAwarePolicy().decide(s).action is Action.ON_DEMAND

    def test_does_not_move_back_blind(self):
        s = state(now=5 * H, remaining_work=6 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND,
                  spot_available=None)
        assert DeadlineAwarePolicy().decide(s).action is Action.ON_DEMAND

    def test_never_stops_on_demand_to_wait(self):
        s = state(now=5 * H, remaining_work=2 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND,
                  spot_available=False)
        assert DeadlineAwarePolicy().decide(s).action is Action.ON_DEMAND

    def test_tick_on_spot_continues(self):
        s = state(event=Event.TICK, current_capacity=Capacity.SPOT)
        assert DeadlineAwarePolicy().decide(s).action is Action.SPOT

    def test_without_remaining_work_it_still_answers(self):
        s = state(remaining_work=None, total_work=None, spot_available=None)
        assert DeadlineAwarePolicy().decide(s).action is Action.SPOT

    def test_rejects_bad_kwargs(self):
        with pytest.raises(ValueError, match="reserve_fraction"):
            DeadlineAwarePolicy(reserve_fraction=2)


class TestThresholdPolicyUnchanged:
    def test_poll_interval_defaults_to_old_behaviour(self):
        s = JobState(now=0, started_at=0, deadline=10 * H, remaining_work=9.7 * H, restart_overhead=360)
        assert ThresholdPolicy().decide(s).action is Action.SPOT
        assert ThresholdPolicy().decide(
            JobState(now=0, started_at=0, deadline=10 * H, remaining_work=9.7 * H, restart_overhead=360,
                     poll_interval=1200)
        ).action is Action.ON_DEMAND
