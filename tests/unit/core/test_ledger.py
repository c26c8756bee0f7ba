from __future__ import annotations

import json

from airflow_spot_training.core.ledger import AttemptRecord, RunLedger, format_summary
from airflow_spot_training.core.attempt import AttemptState
from airflow_spot_training.core.policy import Action, Decision


def _ledger() -> RunLedger:
    led = RunLedger(run_key="k", checkpoint_prefix="/ck", prices={"spot": 1.0, "on_demand": 3.0})
    led.attempts = [
        AttemptRecord(1, "spot", "k-a1", 1, outcome=AttemptState.PREEMPTED, started_at=0, ended_at=3600, preemptions=1,
                        start_step=None, checkpoint_step=40, total_steps=100, price_per_hour=1.0),
        AttemptRecord(2, "spot", "k-a2", 1, outcome=AttemptState.PREEMPTED, started_at=3600, ended_at=5400,
                        preemptions=1, start_step=30, checkpoint_step=60, total_steps=100, price_per_hour=1.0),
        AttemptRecord(3, "on_demand", "k-a3", 2, outcome=AttemptState.SUCCEEDED, started_at=5400, ended_at=7200,
                        start_step=60, checkpoint_step=100, total_steps=100, price_per_hour=3.0),
    ]
    return led


class TestRunLedger:
    def test_preemptions_are_derived_from_attempts(self):
        led = _ledger()
        assert led.preemptions == 2
        led.attempts.append(AttemptRecord(4, "spot", "k-a4", 2, outcome=AttemptState.SUCCEEDED, preemptions=3))
        assert led.preemptions == 5  # in-place restarts (SageMaker) count too

    def test_json_round_trip_keeps_everything(self):
        led = _ledger()
        led.record_decision(Decision(Action.ON_DEMAND, "threshold"), "preempted", 5400.0)
        again = RunLedger.from_dict(json.loads(json.dumps(led.to_dict())))
        assert again.to_dict() == led.to_dict()
        assert again.preemptions == 2

    def test_summary_figures(self):
        s = _ledger().summary(now=7200)
        assert s["preemptions"] == 2
        assert s["capacity_seconds"] == {"spot": 5400.0, "on_demand": 1800.0}
        assert s["cost"] == 1.5 + 1.5  # 1.5 h spot at 1.0 + 0.5 h on-demand at 3.0
        assert s["savings"]["on_demand_only_cost"] == 6.0
        assert s["savings"]["saved_fraction"] == 0.5
        assert s["final_checkpoint_step"] == 100
        assert s["recomputed_steps"] == 10  # attempt 2 resumed at 30 after attempt 1 reached 40
        assert s["outcome"] == AttemptState.SUCCEEDED

    def test_escalation_recorded_only_when_capacity_changes(self):
        led = _ledger()
        led.attempts = led.attempts[:2]
        led.record_decision(Decision(Action.SPOT, "still fine"), "preempted", 1.0)
        assert led.escalations == []
        led.record_decision(Decision(Action.ON_DEMAND, "2 preemptions"), "preempted", 2.0)
        assert [(e.at_attempt, e.to, e.reason) for e in led.escalations] == [(3, "on_demand", "2 preemptions")]

    def test_cost_unknown_without_prices(self):
        led = RunLedger(run_key="k", checkpoint_prefix="/ck")
        led.attempts = [AttemptRecord(1, "spot", "t", 1, outcome=AttemptState.SUCCEEDED, started_at=0, ended_at=10)]
        assert led.summary()["cost"] is None

    def test_format_summary_mentions_the_essentials(self):
        s = _ledger().summary(now=7200)
        s["escalations"] = [{"at_attempt": 3, "at": 0, "to": "on_demand", "reason": "2 preemption(s) reached"}]
        s["metrics"] = {"final_loss": 0.25}
        text = format_summary(s)
        for needle in ("preemptions:        2", "before attempt 3 to on_demand", "checkpoint prefix:  /ck",
                       "recomputed steps:   10", "final_loss:         0.25", "savings:"):
            assert needle in text
        assert "warm start:" not in text and "nodes per attempt:" not in text

    def test_format_summary_names_a_warm_start_and_a_gang(self):
        led = _ledger()
        led.init_uri, led.init_step = "/ck-last-week/step-000000000060", 60
        for attempt in led.attempts:
            attempt.nodes = 2
        text = format_summary(led.summary(now=7200))
        assert "warm start:         /ck-last-week/step-000000000060 (step 60)" in text
        assert "nodes per attempt:  2 (billed as node-seconds)" in text
