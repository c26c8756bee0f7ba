"""The whole loop through real Airflow 3.3 (`airflow dags test`, SQLite), on the local backend.

`airflow dags test` runs deferrable tasks end to end with their triggers inline; the
separate triggerer process, trigger hand-over and REST API are covered by the
distributed suite in tests/e2e/distributed.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from airflow_spot_training.backends.local import _alive

pytestmark = pytest.mark.e2e


def test_preemptions_counted_and_escalation_at_the_threshold(local_airflow):
    local_airflow.dags_test("e2e_threshold", "2026-02-01T00:00:00+00:00")
    summary = local_airflow.xcom("e2e_threshold", "return_value")
    assert summary["outcome"] == "succeeded"
    assert summary["preemptions"] == 2
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "preempted"), ("spot", "preempted"), ("on_demand", "succeeded")]
    assert len(summary["escalations"]) == 1
    assert summary["escalations"][0]["at_attempt"] == 3
    assert "max_preemptions=2" in summary["escalations"][0]["reason"]
    assert summary["final_checkpoint_step"] == 200 and summary["total_steps"] == 200
    assert summary["metrics"]["steps"] == 200 and summary["metrics"]["final_loss"] > 0
    # every relaunch resumed where the previous attempt had committed
    a = summary["attempts"]
    assert a[1]["start_step"] == a[0]["checkpoint_step"] > 0
    assert a[2]["start_step"] == a[1]["checkpoint_step"] > a[1]["start_step"]
    # the prefix is in XCom under its own key, and is the ledger's
    prefix = local_airflow.xcom("e2e_threshold", "checkpoint_prefix")
    assert prefix == summary["checkpoint_prefix"]
    assert prefix.startswith(str(local_airflow.workdir / "checkpoints" / "e2e_threshold"))
    # the XCom "ledger" mirrors the final state too
    assert local_airflow.xcom("e2e_threshold", "ledger")["preemptions"] == 2


def test_deadline_aware_default_escalates_before_the_slack_runs_out(local_airflow):
    # deadline + expected_runtime: the operator's default is the deadline-aware policy
    local_airflow.dags_test("e2e_deadline", "2026-02-01T00:00:00+00:00")
    summary = local_airflow.xcom("e2e_deadline", "return_value")
    assert summary["outcome"] == "succeeded"
    esc = summary["escalations"]
    assert len(esc) == 1 and esc[0]["to"] == "on_demand"
    assert "is below one more preemption + poll" in esc[0]["reason"]
    # escalated by the deadline, not a threshold (there is none), before the spot schedule ran out
    assert 1 <= summary["preemptions"] <= 7
    assert summary["attempts"][-1]["capacity"] == "on_demand"
    assert summary["attempts"][-1]["ended_at"] <= summary["deadline"]


def test_airflow_retry_resumes_from_the_same_prefix_with_the_count_intact(local_airflow):
    local_airflow.dags_test("e2e_retry", "2026-02-01T00:00:00+00:00")
    summary = local_airflow.xcom("e2e_retry", "return_value")
    assert summary["outcome"] == "succeeded"
    assert summary["tries"] == [1, 2]
    outcomes = [(a["capacity"], a["outcome"], a["try_number"]) for a in summary["attempts"]]
    assert outcomes == [("spot", "preempted", 1), ("spot", "failed", 1), ("spot", "succeeded", 2)]
    assert summary["preemptions"] == 1  # remembered across the retry
    failed, resumed = summary["attempts"][1], summary["attempts"][2]
    assert "code 3" in failed["reason"]
    assert resumed["start_step"] is not None and resumed["start_step"] >= 40  # from a checkpoint, not from 0
    assert local_airflow.xcom("e2e_retry", "checkpoint_prefix") == summary["checkpoint_prefix"]
    assert local_airflow.ti("e2e_retry") == {"state": "success", "try_number": 2}


def test_killed_task_stops_its_training_process(local_airflow):
    proc = local_airflow.dags_test("e2e_kill", "2026-02-01T00:00:00+00:00", background=True)
    try:
        status_file = None
        end = time.time() + 120
        while time.time() < end and status_file is None:
            found = list((local_airflow.workdir / "state").glob("*/attempt-1/status.json"))
            for f in found:
                if json.loads((f.parent / "spec.json").read_text())["command"][-1] == "0.05" and \
                        "100000" in json.loads((f.parent / "spec.json").read_text())["command"]:
                    status_file = f
            time.sleep(0.2)
        assert status_file is not None, "the training never started"
        status = json.loads(status_file.read_text())
        while time.time() < end and status.get("state") != "running":
            time.sleep(0.1)
            status = json.loads(status_file.read_text())
        assert _alive(status["pid"])
        proc.send_signal(signal.SIGTERM)  # what a worker gets when the task is killed
        proc.wait(60)
        final = json.loads(status_file.read_text())
        assert final["state"] == "stopped"
        assert not _alive(status["pid"]) and not _alive(status["supervisor_pid"])
    finally:
        if proc.poll() is None:
            proc.kill()
