"""Savings in the ledger: against the cloud's training seconds when it reports them."""

from __future__ import annotations

import pytest

from airflow_spot_training.core.ledger import AttemptRecord, RunLedger


def record(number, capacity, **kwargs):
    return AttemptRecord(number=number, capacity=capacity, token=f"k-a{number}", try_number=1, outcome="succeeded",
                         started_at=1000.0, ended_at=4600.0, **kwargs)


def test_sagemaker_savings_are_training_minus_billable_seconds():
    ledger = RunLedger(run_key="k", checkpoint_prefix="s3://b/p", prices={"spot": 2.0, "on_demand": 2.0})
    ledger.attempts = [record(1, "spot", price_per_hour=2.0, billable_seconds=900.0, training_seconds=3600.0)]
    summary = ledger.summary(now=4600.0)
    assert summary["cost"] == pytest.approx(0.5)
    assert summary["attempts"][0]["saved"] == pytest.approx(1.5)
    assert summary["savings"]["saved_fraction"] == pytest.approx(0.75)


def test_each_attempt_is_compared_with_its_own_on_demand_price():
    ledger = RunLedger(run_key="k", checkpoint_prefix="s3://b/p", prices={"on_demand": 1.0})
    ledger.attempts = [record(1, "spot", price_per_hour=0.3, on_demand_price_per_hour=1.2),
                       record(2, "on_demand", price_per_hour=1.0)]
    summary = ledger.summary(now=4600.0)
    assert [a["saved"] for a in summary["attempts"]] == [pytest.approx(0.9), pytest.approx(0.0)]
    assert summary["savings"]["saved"] == pytest.approx(0.9)


def test_ledgers_written_before_the_new_fields_still_load():
    old = {"run_key": "k", "checkpoint_prefix": "p", "attempts": [
        {"number": 1, "capacity": "spot", "token": "k-a1", "try_number": 1, "billable_seconds": 10.0}]}
    attempt = RunLedger.from_dict(old).attempts[0]
    assert attempt.training_seconds is None and attempt.baseline_seconds() == 10.0
