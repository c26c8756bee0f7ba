"""The spend cap through the real operator loop: a launch that would cross it is refused, and the
figure spent survives Airflow retries (the ledger is in the task state store)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.core.policy import estimate_remaining_work
from airflow_spot_training.core.ledger import RunLedger
from airflow_spot_training.operators.spot_training import LEDGER_KEY, SpotTrainingConfigError, SpotTrainingOperator
from tests.unit.operators.harness import TaskRun
from tests.unit.operators.test_spot_training_loop import TRAIN


def make(tmp_path: Path, **kw) -> SpotTrainingOperator:
    backend = LocalBackend(
        command=[sys.executable, "-c", TRAIN], env={"MARKS": str(tmp_path), "STEPS": "40"},
        state_dir=str(tmp_path / "state"), notice_seconds=0.5,
        spot_price_per_hour=kw.pop("spot_price", 1.0), on_demand_price_per_hour=kw.pop("on_demand_price", 3.0),
        preemptions=kw.pop("preemptions", None),
    )
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("restart_overhead", 0)
    return SpotTrainingOperator(task_id="train", backend=backend, checkpoint_prefix=str(tmp_path / "ck"), **kw)


class TestArguments:
    @pytest.mark.parametrize("name", ["max_cost", "max_on_demand_cost"])
    @pytest.mark.parametrize("value", [0, -1, "10", True])
    def test_a_cap_is_a_positive_number_of_usd(self, tmp_path, name, value):
        with pytest.raises(SpotTrainingConfigError, match=rf"train: {name}={value!r} is invalid: give a positive "
                                                          rf"number of USD \(e.g. {name}=50.0\)"):
            make(tmp_path, expected_runtime=3600, **{name: value})

    def test_a_cap_needs_expected_runtime_to_project_the_first_attempt(self, tmp_path):
        with pytest.raises(SpotTrainingConfigError, match=r"max_cost= needs expected_runtime="):
            make(tmp_path, max_cost=10)

    def test_a_cap_needs_the_backends_on_demand_price(self, tmp_path):
        with pytest.raises(SpotTrainingConfigError, match=r"train: max_cost= needs the backend's on-demand price .* "
                                                          r"give LocalBackend\(on_demand_price_per_hour=\.\.\.\)"):
            make(tmp_path, max_cost=10, expected_runtime=3600, on_demand_price=None)
        make(tmp_path, max_cost=10, expected_runtime=3600, spot_price=None)  # spot projected at on-demand's


class TestRefusal:
    def test_the_first_launch_is_refused_when_its_projection_alone_crosses_max_cost(self, tmp_path):
        # one hour of work at 1 USD/h on spot: 1.00 USD projected, against a 0.50 USD cap
        op = make(tmp_path, max_cost=0.5, expected_runtime=3600)
        run = TaskRun()
        with pytest.raises(AirflowFailException) as refused:
            run.run(op)
        assert str(refused.value) == (
            "the spend cap refuses to launch attempt 1 on spot: spent 0.00 USD, projected 1.00 USD for this "
            "attempt, max_cost 0.50 USD (1.00 USD would cross it). Nothing was launched; the checkpoints are "
            "kept. Raise max_cost= to carry on.")
        assert not (tmp_path / "state").exists()  # nothing launched
        ledger = run.store.get(LEDGER_KEY)
        assert ledger["attempts"] == [] and ledger["decisions"][-1]["event"] == "spend_cap"

    def test_the_on_demand_launch_after_a_preemption_is_refused_and_a_retry_keeps_the_spent_figure(self, tmp_path):
        # 1 USD per second on spot, 2 on on-demand; ten seconds of work: any on-demand attempt is projected
        # at several USD, far above the 0.50 USD on-demand cap, however fast this machine trains
        op = make(tmp_path, spot_price=3600.0, on_demand_price=7200.0, expected_runtime=10,
                  max_on_demand_cost=0.5, max_preemptions=1, preemptions=step_preemptions([3]))
        run = TaskRun()
        with pytest.raises(AirflowFailException) as refused:
            run.run(op)
        ledger = RunLedger.from_dict(run.store.get(LEDGER_KEY))
        assert [(a.capacity, a.outcome.value) for a in ledger.attempts] == [("spot", "preempted")]
        first = ledger.attempts[0]
        remaining = estimate_remaining_work(ledger.progress, ledger.compute_seconds(), 10)
        projected = remaining * 2.0
        assert str(refused.value) == (
            f"the spend cap refuses to launch attempt 2 on on_demand: spent 0.00 USD on on-demand, projected "
            f"{projected:.2f} USD for this attempt, max_on_demand_cost 0.50 USD ({projected:.2f} USD would cross "
            "it). Nothing was launched; the checkpoints are kept. Raise max_on_demand_cost= to carry on.")
        spent = ledger.decisions[-1]["spent"]
        assert spent == {"total": round(first.cost(), 6), "on_demand": 0.0} and spent["total"] > 0
        # every decision carries the spend so far
        assert all("spent" in d for d in ledger.decisions)

        run.new_try()  # an Airflow retry: the same ledger, the same spend, the same refusal
        with pytest.raises(AirflowFailException, match="refuses to launch attempt 2 on on_demand: spent 0.00 USD"):
            run.run(op)
        again = RunLedger.from_dict(run.store.get(LEDGER_KEY))
        assert len(again.attempts) == 1 and again.tries == [1, 2]
        assert again.decisions[-1]["spent"] == spent
        assert run.ti.xcoms["ledger"]["spend"] == {**spent, "max_cost": None, "max_on_demand_cost": 0.5}

    def test_a_run_under_its_cap_finishes_and_reports_what_it_spent(self, tmp_path):
        op = make(tmp_path, max_cost=100.0, max_on_demand_cost=50.0, expected_runtime=60)
        summary = TaskRun().run(op)
        assert summary["outcome"] == "succeeded"
        assert summary["spend"]["max_cost"] == 100.0 and 0 < summary["spend"]["total"] < 100.0
