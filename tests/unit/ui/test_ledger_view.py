"""What the pages draw, from real ledgers (the core's RunLedger), old ledgers and odd values."""

from __future__ import annotations

import json

import pytest

from airflow_spot_training.core.ledger import AttemptRecord, Escalation, RunLedger
from airflow_spot_training.core.reasons import ESCALATION_KINDS, escalation_kind
from airflow_spot_training.ui.ledger_view import (
    decoded,
    overview_row,
    savings_chart,
    task_instance_view,
    totals,
)

T0 = 1_780_000_000.0  # 2026-05-28


def escalated_ledger(*, live: bool = False) -> RunLedger:
    """Two reclaims on spot, a refused launch and a wait, then on-demand (running or done)."""
    attempts = [
        AttemptRecord(1, "spot", "t1", 1, outcome="preempted", reason="spot capacity reclaimed", launched_at=T0,
                      started_at=T0, ended_at=T0 + 600, preemptions=1, start_step=0, checkpoint_step=20,
                      total_steps=100, price_per_hour=0.3),
        AttemptRecord(2, "spot", "t2", 1, outcome="preempted", reason="spot capacity reclaimed",
                      launched_at=T0 + 610, started_at=T0 + 610, ended_at=T0 + 1210, preemptions=1,
                      start_step=15, checkpoint_step=40, total_steps=100, price_per_hour=0.3),
        AttemptRecord(3, "spot", "t3", 1, outcome="capacity_unavailable", reason="InsufficientInstanceCapacity",
                      launched_at=T0 + 1220, ended_at=T0 + 1220, price_per_hour=0.3),
        AttemptRecord(4, "on_demand", "t4", 1, outcome="running" if live else "succeeded", launched_at=T0 + 1300,
                      started_at=T0 + 1300, ended_at=None if live else T0 + 3100, start_step=40,
                      checkpoint_step=40 if live else 100, total_steps=100, price_per_hour=1.0),
    ]
    return RunLedger(
        run_key="dag.run.train", checkpoint_prefix="s3://b/ck", first_launch_at=T0, deadline=T0 + 7200,
        attempts=attempts, prices={"spot": 0.3, "on_demand": 1.0}, tries=[1],
        escalations=[Escalation(4, T0 + 1290, "on_demand", "2 preemption(s) reached the threshold max_preemptions=2")],
        decisions=[{"at": T0 + 1220, "event": "capacity_unavailable", "action": "wait",
                    "reason": "spot capacity unavailable; waiting 1.0 min for it", "wait_seconds": 60.0}],
        spot_wait_seconds=70.0,
    )


class TestTaskInstanceView:
    def test_the_timeline_of_an_escalated_training(self):
        ledger = escalated_ledger()
        view = task_instance_view(ledger.to_dict(), ledger.summary(), now=T0 + 4000, ti_state="success")
        assert view["found"] and not view["live"]
        assert [(a["number"], a["capacity"], a["outcome"]) for a in view["attempts"]] == [
            (1, "spot", "preempted"), (2, "spot", "preempted"), (3, "spot", "capacity_unavailable"),
            (4, "on_demand", "succeeded")]
        assert view["preemptions"] == 2
        assert [(m["attempt"], m["at"], m["count"]) for m in view["preemption_marks"]] == [
            (1, T0 + 600, 1), (2, T0 + 1210, 1)]
        assert [(w["kind"], w["start"], w["end"]) for w in view["capacity_waits"]] == [
            ("refused", T0 + 1220, T0 + 1220), ("wait", T0 + 1220, T0 + 1280)]
        [escalation] = view["escalations"]
        assert escalation["kind"] == "preemptions" and escalation["at"] == T0 + 1290
        assert "max_preemptions=2" in escalation["reason"]
        assert view["deadline"] == T0 + 7200
        assert view["window"] == {"start": T0, "end": T0 + 3100}
        assert view["recomputed_steps"] == 5  # attempt 2 resumed at 15 after attempt 1 reached 20
        assert view["checkpoint"]["step"] == 100 and view["checkpoint"]["fraction"] == 1.0
        assert view["checkpoint"]["known_at"] == T0 + 3100
        # 1200 s of spot at 0.3/h, 1800 s of on-demand at 1.0/h; on-demand only: 3000 s at 1.0/h
        assert view["cost"] == pytest.approx(0.6, abs=1e-5)
        assert view["on_demand_only_cost"] == pytest.approx(3000 / 3600, abs=1e-5)
        assert view["saved"] == pytest.approx(3000 / 3600 - 0.6, abs=1e-5)
        assert view["spot_share"] == pytest.approx(1200 / 3000, abs=1e-5)

    def test_a_running_attempt_is_drawn_up_to_now_and_the_page_keeps_polling(self):
        ledger = escalated_ledger(live=True)
        view = task_instance_view(ledger.to_dict(), ledger.summary(now=T0 + 1400), now=T0 + 2000,
                                  ti_state="deferred")
        assert view["live"]
        last = view["attempts"][-1]
        assert last["live"] and last["end"] == T0 + 2000 and last["seconds"] == pytest.approx(700, abs=1e-5)
        assert view["checkpoint"]["step"] == 40 and view["checkpoint"]["age_seconds"] == pytest.approx(790, abs=1e-5)

    def test_links_and_fields_of_newer_ledgers_are_shown_or_ignored(self):
        ledger = escalated_ledger()
        full = ledger.to_dict()
        full["attempts"][0]["links"] = [{"name": "console", "url": "https://console/1"}, {"name": "bad"}]
        full["attempts"][0]["nodes"] = 4
        full["spend"] = {"usd": 1}
        published = ledger.summary()
        published["attempts"][1]["links"] = [{"name": "log", "url": "https://logs/2"}]
        view = task_instance_view(full, published, now=T0 + 4000)
        assert view["attempts"][0]["links"] == [{"name": "console", "url": "https://console/1"}]
        assert view["attempts"][1]["links"] == [{"name": "log", "url": "https://logs/2"}]

    def test_an_old_summary_alone_still_renders(self):
        old = {"run_key": "k", "outcome": "succeeded", "attempts": [
            {"number": 1, "capacity": "spot", "outcome": "preempted", "started_at": T0, "ended_at": T0 + 60,
             "seconds": 60, "preemptions": 1},
            {"number": 2, "capacity": "on_demand", "outcome": "succeeded", "started_at": T0 + 70,
             "ended_at": T0 + 130}],
            "preemptions": 1, "escalations": [{"at_attempt": 2, "at": T0 + 65, "to": "on_demand",
                                               "reason": "deadline in 5 min cannot absorb another preemption"}]}
        view = task_instance_view(None, json.dumps(old), now=T0 + 200, ti_state="success")
        assert view["found"] and len(view["attempts"]) == 2
        assert view["escalations"][0]["kind"] == "deadline"
        assert view["cost"] is None and view["saved"] is None and view["capacity_waits"] == []
        assert view["checkpoint"]["step"] is None

    @pytest.mark.parametrize("full, published", [
        (None, None), ("not json", None), ({"attempts": "x"}, {"run_key": "k"}), ([], 7),
        (None, {"some": "other task's ledger XCom"}),
    ])
    def test_no_ledger(self, full, published):
        view = task_instance_view(full, published, now=T0, ti_state="queued")
        assert view["found"] is False and view["live"] is True

    def test_junk_in_the_state_store_with_a_good_summary(self):
        ledger = escalated_ledger()
        for junk in ([1, 2], "text", {"attempts": [None, {"number": "x"}]}):
            view = task_instance_view(junk, ledger.summary(), now=T0 + 4000)
            assert view["found"] and len(view["attempts"]) == 4 and view["checkpoint"]["step"] == 100

    def test_a_commit_time_is_used_when_a_ledger_has_one(self):
        ledger = escalated_ledger()
        full = ledger.to_dict()
        full["attempts"][3]["checkpoint_committed_at"] = T0 + 3000
        assert task_instance_view(full, None, now=T0 + 4000)["checkpoint"]["known_at"] == T0 + 3000

    def test_a_full_ledger_that_cannot_be_read_falls_back_to_the_summary(self):
        ledger = escalated_ledger()
        broken = ledger.to_dict()
        broken["escalations"] = [{"unexpected": 1}]
        view = task_instance_view(broken, ledger.summary(), now=T0 + 4000)
        assert view["found"] and view["preemptions"] == 2


class TestOverview:
    def rows(self):
        done = escalated_ledger().summary()
        calm = RunLedger(run_key="k2", checkpoint_prefix="/ck", prices={"spot": 0.3, "on_demand": 1.0},
                         attempts=[AttemptRecord(1, "spot", "t", 1, outcome="succeeded", started_at=T0,
                                                 ended_at=T0 + 3600, price_per_hour=0.3)]).summary()
        out = []
        for dag_id, day, summary in (("a", 0, done), ("a", 1, calm), ("b", 1, done)):
            row = overview_row(summary)
            out.append({"dag_id": dag_id, "run_after": T0 + day * 86400, **row})
        return out

    def test_row_figures(self):
        row = overview_row(json.dumps(escalated_ledger().summary()))
        assert row["attempts"] == 4 and row["preemptions"] == 2 and row["escalations"] == 1
        assert row["escalation_kinds"] == ["preemptions"] and row["on_demand_attempts"] == 1
        assert row["saved"] == pytest.approx(3000 / 3600 - 0.6, abs=1e-5)
        assert overview_row({"attempts": []}) is None and overview_row("[1]") is None

    def test_chart_per_dag_and_day(self):
        chart = savings_chart(self.rows())
        assert chart["bucket"] == "day" and chart["days"] == ["2026-05-28", "2026-05-29"]
        assert [s["dag_id"] for s in chart["series"]] == ["a", "b"]
        a, b = chart["series"]
        assert a["preemptions"] == [2, 0] and b["preemptions"] == [0, 2]
        assert a["runs"] == [1, 1] and b["runs"] == [0, 1]
        assert a["saved"][1] == pytest.approx(0.7, abs=1e-5)

    def test_long_histories_are_charted_per_week_or_month(self):
        def rows(days: int) -> list[dict]:
            return [{"dag_id": "a", "run_after": T0 + d * 86400, "saved": 1.0, "preemptions": 1}
                    for d in range(days)]
        weekly = savings_chart(rows(365))
        assert weekly["bucket"] == "week" and len(weekly["days"]) == 53
        assert weekly["days"][0] == "2026-05-25"  # the Monday of T0's week
        assert sum(weekly["series"][0]["runs"]) == 365
        monthly = savings_chart(rows(1000))
        assert monthly["bucket"] == "month" and monthly["days"][:2] == ["2026-05", "2026-06"]
        assert sum(monthly["series"][0]["preemptions"]) == 1000

    def test_totals(self):
        result = totals(self.rows())
        assert result["task_instances"] == 3 and result["preemptions"] == 4 and result["escalated"] == 2
        assert result["cost"] == pytest.approx(0.6 * 2 + 0.3, abs=1e-5)
        assert result["saved_fraction"] == pytest.approx(1 - 1.5 / (2 * 3000 / 3600 + 1.0), abs=1e-5)


def test_escalation_kinds():
    assert escalation_kind("3 preemption(s) reached the threshold max_preemptions=3") == "preemptions"
    assert escalation_kind("waited 3600 s for spot capacity, reaching max_spot_wait=3600 s") == "spot_wait"
    assert escalation_kind("deadline in 10 min: no room for another restart") == "deadline"
    assert escalation_kind("uniform progress safety net: 5 min left", "on_demand") == "policy"
    assert escalation_kind("moved back", "spot") == "back_to_spot"
    assert {escalation_kind(r) for r in ("", None, "x")} <= set(ESCALATION_KINDS)


def test_decoded():
    assert decoded(json.dumps(json.dumps({"a": 1}))) == {"a": 1}
    assert decoded("{") is None and decoded(None) is None


class TestSpendAndPools:
    def test_the_spend_cap_and_each_attempts_pool_choice_are_in_the_view(self):
        ledger = escalated_ledger()
        ledger.spend_cap = {"max_cost": 5.0, "max_on_demand_cost": 2.0}
        ledger.attempts[1].pool_reason = "b first: no reclaim or capacity miss in the window; a: reclaimed an attempt"
        view = task_instance_view(ledger.to_dict(), None, now=T0 + 4000, ti_state="success")
        # 20 min of spot at 0.3 USD/h, then 30 min of on-demand at 1.0 USD/h
        assert view["spent"] == pytest.approx(0.1 + 0.5) and view["spent_on_demand"] == pytest.approx(0.5)
        assert (view["max_cost"], view["max_on_demand_cost"]) == (5.0, 2.0)
        assert view["attempts"][1]["pool_reason"].startswith("b first")
        assert view["attempts"][0]["pool_reason"] == ""

    def test_a_ledger_without_a_cap_shows_none(self):
        ledger = escalated_ledger()
        view = task_instance_view(ledger.to_dict(), ledger.summary(), now=T0 + 4000, ti_state="success")
        assert view["max_cost"] is None and view["max_on_demand_cost"] is None
