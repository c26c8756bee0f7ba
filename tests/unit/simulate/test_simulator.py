from __future__ import annotations

import json
import random

import pytest

from airflow_spot_training.core.policies import POLICIES, DeadlineAwarePolicy, ThresholdPolicy, make_policy
from airflow_spot_training.core.policy import Action, Decision, Event
from airflow_spot_training.simulate.__main__ import main as cli_main
from airflow_spot_training.simulate.optimum import optimal_cost
from airflow_spot_training.simulate.simulator import (
    ON_DEMAND_PRICE,
    SPOT_PRICE,
    on_demand_only_cost,
    simulate,
)
from airflow_spot_training.simulate.traces import Trace, load_trace

GAP = 60.0
TASK = 2 * 3600.0  # 120 steps of work
DEADLINE = 3 * 3600.0  # 60 steps of slack
OVERHEAD = 300.0  # 5 steps
STEPS = 400
ALL = list(POLICIES)


def run(name, pools, **kw):
    return simulate(make_policy(name), pools, GAP, kw.pop("task", TASK), kw.pop("deadline", DEADLINE),
                    kw.pop("overhead", OVERHEAD), **kw)


class TestSimulator:
    @pytest.mark.parametrize("name", ALL)
    def test_spot_always_available_costs_one_spot_run(self, name):
        r = run(name, [[True] * STEPS])
        assert not r.missed and r.preemptions == 0 and r.launches == 1
        assert r.cost == pytest.approx(SPOT_PRICE * (TASK + OVERHEAD) / 3600)

    def test_preemption_loses_work_since_the_checkpoint(self):
        trace = [True] * 30 + [False] + [True] * STEPS
        continuous = simulate(make_policy("greedy"), [trace], GAP, TASK, DEADLINE, OVERHEAD)
        coarse = simulate(make_policy("greedy"), [trace], GAP, TASK, DEADLINE, OVERHEAD,
                          checkpoint_interval=600)
        assert continuous.preemptions == coarse.preemptions == 1
        # 25 steps of work before the preemption; 1500 s worth, 300 s of it unsaved at 600 s intervals
        assert coarse.finish_time == pytest.approx(continuous.finish_time + 300)

    def test_other_pool_is_used_after_a_preemption(self):
        a = [True] * 20 + [False] * STEPS
        b = [True] * STEPS
        r = run("greedy", [a, b])
        assert r.preemptions == 1 and r.on_demand_seconds == 0 and not r.missed

    def test_infeasible_deadline_is_an_error_up_front(self):
        with pytest.raises(ValueError, match="infeasible deadline"):
            run("deadline_aware", [[True] * STEPS], deadline=TASK)

    def test_decisions_are_recorded_with_events(self):
        r = run("deadline_aware", [[False] * 5 + [True] * STEPS], record=True)
        assert r.decisions[0][1] == Event.START.value
        assert any(e == Event.CAPACITY_UNAVAILABLE.value for _, e, _ in r.decisions)


class TestAdversarialTraces:
    """Hand-made traces that try to make a policy miss or overspend."""

    @pytest.mark.parametrize("name", ALL)
    def test_spot_disappears_right_after_every_launch(self, name):
        r = run(name, [[True, False] * STEPS])
        assert not r.missed
        assert r.cost <= on_demand_only_cost(TASK, OVERHEAD) * 1.2

    def test_threshold_escalates_after_n_preemptions(self):
        r = simulate(ThresholdPolicy(max_preemptions=2), [[True, False] * STEPS], GAP, TASK, DEADLINE, OVERHEAD)
        assert r.preemptions == 2 and r.spot_seconds == 2 * GAP

    @pytest.mark.parametrize("name", ALL)
    def test_spot_never_available(self, name):
        r = run(name, [[False] * STEPS])
        assert not r.missed and r.spot_seconds == 0
        if name == "uniform_progress":  # it stops on-demand when ahead of its line, paying restarts
            assert r.cost <= on_demand_only_cost(TASK, OVERHEAD) * 1.2
        else:
            assert r.cost == pytest.approx(on_demand_only_cost(TASK, OVERHEAD))

    @pytest.mark.parametrize("name", ALL)
    def test_deadline_tighter_than_task(self, name):
        with pytest.raises(ValueError, match=r"infeasible deadline: 2\.0 h .*2\.0 h of work"):
            run(name, [[True] * STEPS], deadline=TASK)

    @pytest.mark.parametrize("name", ALL)
    @pytest.mark.parametrize("shift", [-3, -1, 0, 1, 3])
    def test_spot_returns_exactly_when_the_slack_runs_out(self, name, shift):
        # slack is 60 steps - one restart; spot comes back around the step it is spent
        back = 55 + shift
        r = run(name, [[False] * back + [True] * STEPS])
        assert not r.missed

    @pytest.mark.parametrize("name", ALL)
    def test_spot_flickers_near_the_deadline(self, name):
        trace = [True] * 50 + [False] * 40 + ([True] * 3 + [False] * 2) * STEPS
        assert not run(name, [trace]).missed

    def test_deadline_aware_uses_spot_that_returns_after_escalating(self):
        r = run("deadline_aware", [[False] * 100 + [True] * STEPS])
        assert r.moves_to_spot == 1 and not r.missed
        assert r.cost < run("greedy", [[False] * 100 + [True] * STEPS]).cost


def heavy_tailed_trace(rng: random.Random, steps: int) -> list[bool]:
    """Availability that alternates with Pareto-distributed run lengths, like the measured traces:
    most outages and spot windows are short, a few are very long."""
    trace, up = [], rng.random() < 0.6
    while len(trace) < steps:
        trace += [up] * max(1, int(rng.paretovariate(1.2) * (6 if up else 3)))
        up = not up
    return trace[:steps]


class TestDeadlineAwareOnTraces:
    """The default policy on trace windows: never late, and each of its rules pays off."""

    @pytest.mark.parametrize("seed", range(8))
    @pytest.mark.parametrize(("task", "deadline", "overhead", "checkpoint"), [
        (TASK, TASK + 600, 300.0, 0.0),  # tight: 10 min of slack beyond one restart
        (TASK, DEADLINE, 300.0, 600.0),  # work since the last checkpoint is lost at each preemption
        (TASK, 2 * TASK, 600.0, 0.0),  # loose, long restarts
    ])
    def test_never_misses(self, seed, task, deadline, overhead, checkpoint):
        rng = random.Random(seed)
        pools = [heavy_tailed_trace(rng, STEPS) for _ in range(1 + seed % 2)]
        r = simulate(make_policy("deadline_aware"), pools, GAP, task, deadline, overhead, checkpoint)
        assert not r.missed, (seed, r.finish_time, deadline)
        assert r.cost >= optimal_cost(pools, GAP, task, deadline, overhead) - 1e-9

    def test_loose_deadline_waits_like_greedy(self):
        # 20 min without spot at the start of a job with 55 min of slack: waiting is free
        trace = [False] * 20 + [True] * STEPS
        ours, greedy, up = (run(name, [trace]) for name in ("deadline_aware", "greedy", "uniform_progress"))
        assert ours.on_demand_seconds == 0 and ours.cost == pytest.approx(greedy.cost)
        assert up.on_demand_seconds > 0 and ours.cost < up.cost

    def test_hysteresis_ignores_spot_that_flickers_back(self):
        # escalated to on-demand by a 40 min outage; spot then flickers for 40 min and stays
        trace = [False] * 40 + [True, False] * 20 + [True] * STEPS
        ours = run("deadline_aware", [trace])
        eager = simulate(DeadlineAwarePolicy(move_back_after=0), [trace], GAP, TASK, DEADLINE, OVERHEAD)
        assert ours.moves_to_spot == 1 and ours.preemptions == 0
        assert eager.preemptions > 3 and ours.cost < eager.cost
        assert not ours.missed and not eager.missed

    def test_it_is_told_how_long_spot_has_been_available(self):
        trace = [True] * 3 + [False] + [True] * STEPS
        seen = Recorder()
        simulate(seen, [trace], GAP, TASK, DEADLINE, OVERHEAD)
        # asked twice at the preemption (PREEMPTED, then CAPACITY_UNAVAILABLE after the failed launch)
        assert seen.spot_available_for[:7] == [0.0, GAP, 2 * GAP, None, None, 0.0, GAP]


class Recorder:
    """A policy that always wants spot and remembers what it was told."""

    def __init__(self) -> None:
        self.spot_available_for: list[float | None] = []

    def decide(self, state):
        self.spot_available_for.append(state.spot_available_for)
        return Decision(Action.SPOT, "record")


class TestOptimum:
    def test_all_spot(self):
        assert optimal_cost([[True] * STEPS], GAP, TASK, DEADLINE, OVERHEAD) == pytest.approx(
            SPOT_PRICE * (TASK + OVERHEAD) / 3600)

    def test_no_spot(self):
        assert optimal_cost([[False] * STEPS], GAP, TASK, DEADLINE, OVERHEAD) == pytest.approx(
            ON_DEMAND_PRICE * (TASK + OVERHEAD) / 3600)

    def test_waits_for_late_spot_when_the_slack_allows(self):
        trace = [False] * 50 + [True] * STEPS
        assert optimal_cost([trace], GAP, TASK, DEADLINE, OVERHEAD) == pytest.approx(
            SPOT_PRICE * (TASK + OVERHEAD) / 3600)

    @pytest.mark.parametrize("seed", range(12))
    @pytest.mark.parametrize("overhead", [0.0, 90.0, 300.0])
    def test_optimum_is_a_lower_bound_for_every_policy(self, seed, overhead):
        rng = random.Random(seed)
        pools = []
        for _ in range(1 + seed % 2):
            trace, up = [], rng.random() < 0.5
            while len(trace) < STEPS:
                trace += [up] * rng.randint(1, 40)
                up = not up
            pools.append(trace[:STEPS])
        opt = optimal_cost(pools, GAP, TASK, DEADLINE, overhead)
        for name in ALL:
            r = simulate(make_policy(name), pools, GAP, TASK, DEADLINE, overhead)
            assert not r.missed, name
            assert opt <= r.cost + 1e-9, name


class TestTraces:
    def test_load_and_resample(self, tmp_path):
        path = tmp_path / "t.json"
        path.write_text(json.dumps({"metadata": {"gap_seconds": 30}, "data": [1, 1, 1, 0, 1, 1, 1, 1]}))
        trace = load_trace(path)
        assert trace.resampled(60).available == (True, False, True, True)
        assert trace.resampled(15).available[:6] == (True,) * 6

    def test_window_wraps(self):
        trace = Trace("t", 60, (True, False, False))
        assert trace.window(2, 4) == [False, True, False, False]

    def test_not_a_trace(self, tmp_path):
        path = tmp_path / "bad.json"
        path.write_text("{}")
        with pytest.raises(ValueError, match="not a spot trace"):
            load_trace(path)


class TestCli:
    def test_prints_cost_and_optimum(self, tmp_path, capsys):
        path = tmp_path / "t.json"
        path.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [1, 0, 0, 1] * 50}))
        rc = cli_main(["--trace", str(path), "--task-hours", "8", "--deadline-hours", "12",
                       "--policy", "greedy", "--policy", "deadline_aware"])
        out = capsys.readouterr().out
        assert rc == 0
        assert "greedy" in out and "deadline_aware" in out and "offline optimum" in out
        assert "met the deadline" in out

    def test_infeasible_is_a_clear_error(self, tmp_path, capsys):
        path = tmp_path / "t.json"
        path.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [1] * 10}))
        assert cli_main(["--trace", str(path), "--task-hours", "8", "--deadline-hours", "8"]) == 2
        assert "infeasible deadline" in capsys.readouterr().err


def test_wait_decision_is_honoured_on_demand():
    """Uniform Progress may stop on-demand to wait; the simulator applies it."""
    trace = [False] * STEPS
    r = simulate(make_policy("uniform_progress"), [trace], GAP, TASK, 6 * 3600, OVERHEAD, record=True)
    assert not r.missed
    assert any(d.action is Action.WAIT for _, e, d in r.decisions if e == Event.TICK.value)
