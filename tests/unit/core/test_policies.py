from __future__ import annotations

import copy
import json
import pickle

import pytest

from airflow_spot_training.core.policies import (
    DEFAULT_MAX_PREEMPTIONS,
    DEFAULT_MAX_SPOT_WAIT,
    NOT_GIVEN,
    POLICIES,
    DeadlineAwarePolicy,
    GreedyPolicy,
    ThresholdPolicy,
    UniformProgressPolicy,
    default_max_spot_wait,
    default_policy,
    make_policy,
    named_policy,
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
        s = state(now=4 * H, remaining_work=9 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
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
        with pytest.raises(ValueError, match="reserve_per_hour_left"):
            DeadlineAwarePolicy(reserve_per_hour_left=-0.1)
        with pytest.raises(ValueError, match="move_back_after"):
            DeadlineAwarePolicy(move_back_after=-1)
        with pytest.raises(ValueError, match="max_preemptions"):
            DeadlineAwarePolicy(max_preemptions=-1)


class TestDeadlineAwareRegimes:
    """One hand-built state per regime: tight and loose deadlines, moving back, the cap."""

    def test_tight_deadline_reserve_follows_the_progress_line(self):
        # 10 h of work in 11 h: the line holds back 0.9 h / 11 h = 8 % of the time left
        tight = state(deadline=11 * H)
        policy = DeadlineAwarePolicy()
        assert policy.reserve_rate(tight) == pytest.approx(0.9 / 11)
        # 5 h in, 4.6 h done: slack 0.5 h; the line keeps 6 h * 8 % = 0.49 h + the margin: on-demand
        behind = state(deadline=11 * H, now=5 * H, remaining_work=5.4 * H, spot_available=False,
                       event=Event.PREEMPTED, current_capacity=Capacity.SPOT)
        assert policy.decide(behind).action is Action.ON_DEMAND
        # 5 h in, 5 h done: slack 0.9 h is above it: wait for spot
        ahead = state(deadline=11 * H, now=5 * H, remaining_work=5 * H, spot_available=False,
                      event=Event.PREEMPTED, current_capacity=Capacity.SPOT)
        assert policy.decide(ahead).action is Action.WAIT

    def test_loose_deadline_waits_like_greedy_until_the_capped_reserve(self):
        # 10 h in 20 h: the line would hold back 9.9 h / 20 h = 50 % of the time left, the cap 15 %
        loose = dict(deadline=20 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
        policy = DeadlineAwarePolicy()
        assert policy.reserve_rate(state(**loose)) == pytest.approx(0.15)
        # 6 h waited at the start: slack 3.9 h; reserve 14 h * 0.15 + margin = 2.23 h: still waits,
        # where the straight line (7 h of reserve) would have run on-demand long ago
        waited = state(now=6 * H, **loose)
        assert policy.decide(waited).action is Action.WAIT
        assert DeadlineAwarePolicy(reserve_per_hour_left=1.0).decide(waited).action is Action.ON_DEMAND
        # 8 h waited: slack 1.9 h is below the 1.93 h reserve: on-demand
        assert policy.decide(state(now=8 * H, **loose)).action is Action.ON_DEMAND

    def test_zero_reserve_is_greedy_waiting(self):
        s = state(now=3.7 * H, remaining_work=10 * H, spot_available=False, event=Event.CAPACITY_UNAVAILABLE)
        assert DeadlineAwarePolicy(reserve_per_hour_left=0).decide(s).action is Action.WAIT
        assert GreedyPolicy().decide(s).action is Action.WAIT

    def test_without_total_work_the_rate_is_the_cap(self):
        s = state(total_work=None)
        assert DeadlineAwarePolicy().reserve(s) == pytest.approx(0.1 * H + 120 + 14 * H * 0.15)

    @pytest.mark.parametrize(("seen_for", "action"), [
        (0.0, Action.ON_DEMAND),  # spot just came back: it often vanishes again within minutes
        (1199.0, Action.ON_DEMAND),
        (1200.0, Action.SPOT),
        (None, Action.SPOT),  # the caller does not track it: no hysteresis
    ])
    def test_moves_back_only_once_spot_has_stayed(self, seen_for, action):
        s = state(now=5 * H, remaining_work=6 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND,
                  spot_available_for=seen_for)
        assert DeadlineAwarePolicy().decide(s).action is action

    def test_move_back_cushion(self):
        # slack 0.5 h: enough for margin + one restart (0.23 h), not with 4 more restarts of cushion
        s = state(now=5 * H, remaining_work=8.4 * H, event=Event.TICK, current_capacity=Capacity.ON_DEMAND,
                  spot_available_for=3600.0)
        assert DeadlineAwarePolicy().decide(s).action is Action.SPOT
        assert DeadlineAwarePolicy(move_back_restarts=4).decide(s).action is Action.ON_DEMAND

    def test_max_preemptions_caps_spot_even_with_slack(self):
        policy = DeadlineAwarePolicy(max_preemptions=2)
        preempted = state(preemptions=2, event=Event.PREEMPTED, current_capacity=Capacity.SPOT)
        decision = policy.decide(preempted)
        assert decision.action is Action.ON_DEMAND and "max_preemptions=2" in decision.reason
        on_demand = state(preemptions=2, event=Event.TICK, current_capacity=Capacity.ON_DEMAND,
                          spot_available_for=3600.0)
        assert policy.decide(on_demand).action is Action.ON_DEMAND
        assert policy.decide(state(preemptions=1, event=Event.PREEMPTED)).action is Action.SPOT

    def test_without_slack_it_never_leaves_on_demand_blind(self):
        s = state(remaining_work=None, total_work=None, spot_available=None, event=Event.TICK,
                  current_capacity=Capacity.ON_DEMAND)
        assert DeadlineAwarePolicy().decide(s).action is Action.ON_DEMAND


class TestThresholdPolicyUnchanged:
    def test_poll_interval_defaults_to_old_behaviour(self):
        s = JobState(now=0, started_at=0, deadline=10 * H, remaining_work=9.7 * H, restart_overhead=360)
        assert ThresholdPolicy().decide(s).action is Action.SPOT
        assert ThresholdPolicy().decide(
            JobState(now=0, started_at=0, deadline=10 * H, remaining_work=9.7 * H, restart_overhead=360,
                     poll_interval=1200)
        ).action is Action.ON_DEMAND


class TestDefaultPolicy:
    """Which policy the operator uses when the DAG author chose none."""

    def test_deadline_and_runtime_make_it_deadline_aware_without_a_cap(self):
        policy = default_policy(deadline="8h", expected_runtime=6 * H)
        assert isinstance(policy, DeadlineAwarePolicy) and policy.max_preemptions is None

    def test_an_explicit_max_preemptions_still_caps_it(self):
        policy = default_policy(deadline="8h", expected_runtime=6 * H, max_preemptions=2)
        assert isinstance(policy, DeadlineAwarePolicy) and policy.max_preemptions == 2
        assert default_policy(deadline="8h", expected_runtime=6 * H, max_preemptions=None).max_preemptions is None

    def test_a_templated_deadline_counts_as_given(self):
        assert isinstance(default_policy(deadline="{{ params.due }}", expected_runtime=H), DeadlineAwarePolicy)

    @pytest.mark.parametrize(("deadline", "runtime"), [(None, None), ("8h", None), (None, 6 * H)])
    def test_otherwise_the_threshold_rule_stays(self, deadline, runtime):
        policy = default_policy(deadline=deadline, expected_runtime=runtime)
        assert isinstance(policy, ThresholdPolicy) and policy.max_preemptions == DEFAULT_MAX_PREEMPTIONS == 3
        assert default_policy(deadline=deadline, expected_runtime=runtime, max_preemptions=None).max_preemptions is None
        assert default_policy(deadline=deadline, expected_runtime=runtime, max_preemptions=0).max_preemptions == 0

    def test_named_policies_take_max_preemptions_where_it_applies(self):
        assert named_policy("threshold").max_preemptions == 3
        assert named_policy("threshold", 1).max_preemptions == 1
        assert named_policy("deadline_aware").max_preemptions is None
        assert named_policy("deadline_aware", 4).max_preemptions == 4
        assert isinstance(named_policy("greedy", 4), GreedyPolicy)

    def test_max_spot_wait_yields_to_the_deadline_only_under_the_deadline_aware_policy(self):
        aware, threshold = DeadlineAwarePolicy(), ThresholdPolicy()
        known = dict(deadline="8h", expected_runtime=6 * H)
        assert default_max_spot_wait(NOT_GIVEN, aware, **known) is None
        assert default_max_spot_wait(NOT_GIVEN, threshold, **known) == DEFAULT_MAX_SPOT_WAIT == 3600
        assert default_max_spot_wait(NOT_GIVEN, aware, deadline="8h", expected_runtime=None) == 3600
        assert default_max_spot_wait(600, aware, **known) == 600
        assert default_max_spot_wait(None, threshold, **known) is None

    def test_not_given_survives_copies(self):
        assert copy.deepcopy(NOT_GIVEN) is NOT_GIVEN
        assert pickle.loads(pickle.dumps(NOT_GIVEN)) is NOT_GIVEN
        assert repr(NOT_GIVEN) == "NOT_GIVEN"
