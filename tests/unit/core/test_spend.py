"""The spend cap's pure parts: what a run spent, what an attempt is projected to cost, refusals."""

from __future__ import annotations

import json

import pytest

from airflow_spot_training.core.attempt import AttemptState
from airflow_spot_training.core.ledger import AttemptRecord, RunLedger
from airflow_spot_training.core.policy import Action, Capacity, Decision
from airflow_spot_training.core.spend import (
    Spend,
    SpendCap,
    projected_attempt_cost,
    projection_price,
    spend_so_far,
)


def _ledger() -> RunLedger:
    led = RunLedger(run_key="k", checkpoint_prefix="/ck", prices={"spot": 1.0, "on_demand": 3.0})
    led.attempts = [
        AttemptRecord(1, "spot", "k-a1", 1, outcome=AttemptState.PREEMPTED, started_at=0, ended_at=3600,
                      price_per_hour=0.5),
        AttemptRecord(2, "on_demand", "k-a2", 2, outcome=AttemptState.FAILED, started_at=3600, ended_at=5400,
                      price_per_hour=3.0),
        # its price was never recorded: counted at the ledger's spot price
        AttemptRecord(3, "spot", "k-a3", 2, outcome=AttemptState.RUNNING, started_at=5400),
    ]
    return led


class TestSpendSoFar:
    def test_every_attempt_of_every_try_counts_a_running_one_up_to_now(self):
        spent = spend_so_far(_ledger(), now=7200)
        assert spent == Spend(total=0.5 + 1.5 + 0.5, on_demand=1.5)

    def test_a_spot_attempt_without_any_spot_price_counts_at_the_on_demand_price(self):
        led = _ledger()
        led.prices = {"on_demand": 3.0}
        assert spend_so_far(led, now=7200).total == 0.5 + 1.5 + 1.5

    def test_billable_seconds_win_over_wall_clock(self):
        led = _ledger()
        led.attempts[0].billable_seconds = 1800
        assert spend_so_far(led, now=7200).total == 0.25 + 1.5 + 0.5

    def test_the_ledger_records_spend_at_every_decision_and_in_its_summary(self):
        led = _ledger()
        led.spend_cap = SpendCap(max_cost=10.0).to_dict()
        led.record_decision(Decision(Action.SPOT, "try spot"), "preempted", 7200.0)
        assert led.decisions[-1]["spent"] == {"total": 2.5, "on_demand": 1.5}
        again = RunLedger.from_dict(json.loads(json.dumps(led.to_dict())))
        assert again.summary(now=7200)["spend"] == {"total": 2.5, "on_demand": 1.5, "max_cost": 10.0,
                                                    "max_on_demand_cost": None}


class TestProjection:
    def test_remaining_work_plus_one_restart_at_the_price(self):
        assert projected_attempt_cost(3600, 360, 2.0) == pytest.approx(2.2)

    def test_negative_inputs_are_refused(self):
        with pytest.raises(ValueError):
            projected_attempt_cost(-1, 0, 1.0)

    def test_an_unknown_spot_price_is_projected_at_the_on_demand_price(self):
        assert projection_price(Capacity.SPOT, {"spot": None, "on_demand": 3.0}) == 3.0
        assert projection_price(Capacity.SPOT, {"spot": 0.9, "on_demand": 3.0}) == 0.9
        assert projection_price(Capacity.ON_DEMAND, {"spot": 0.9}) is None


class TestSpendCap:
    def test_a_launch_that_would_cross_max_cost_is_refused_with_spent_projected_and_cap(self):
        refusal = SpendCap(max_cost=5.0).refusal(Spend(3.0, 1.0), 2.5, Capacity.SPOT, attempt=4)
        assert refusal == (
            "the spend cap refuses to launch attempt 4 on spot: spent 3.00 USD, projected 2.50 USD for this "
            "attempt, max_cost 5.00 USD (5.50 USD would cross it). Nothing was launched; the checkpoints are "
            "kept. Raise max_cost= to carry on.")

    def test_reaching_the_cap_exactly_is_allowed(self):
        assert SpendCap(max_cost=5.0).refusal(Spend(3.0, 1.0), 2.0, Capacity.SPOT, attempt=4) is None

    def test_the_on_demand_cap_counts_only_on_demand_spend_and_launches(self):
        cap = SpendCap(max_on_demand_cost=2.0)
        assert cap.refusal(Spend(9.0, 1.0), 5.0, Capacity.SPOT, attempt=2) is None
        assert cap.refusal(Spend(9.0, 1.0), 0.5, Capacity.ON_DEMAND, attempt=2) is None
        refusal = cap.refusal(Spend(9.0, 1.0), 1.5, Capacity.ON_DEMAND, attempt=2)
        assert refusal is not None and "spent 1.00 USD on on-demand, projected 1.50 USD" in refusal
        assert "max_on_demand_cost 2.00 USD" in refusal
        assert not cap.applies_to(Capacity.SPOT) and cap.applies_to(Capacity.ON_DEMAND)
