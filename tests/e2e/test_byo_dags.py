"""Bring your own script, end to end through `airflow dags test` on the local backend.

A Hugging Face Trainer and a Lightning training, each run under the synced checkpoint
folder, are reclaimed three times (twice with a notice, once without), escalate at the
threshold and finish. What the attempts did is read from their own logs: the training's
JSON lines (steps trained, saves finished) and the wrapper's (checkpoints committed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


class AttemptLog:
    def __init__(self, attempt_dir: Path) -> None:
        self.events = _events(attempt_dir / "training.log")

    def steps(self, event: str) -> list[int]:
        return [e["step"] for e in self.events if e.get("event") == event]

    def wrapper(self, action: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == "folder-sync" and e.get("action") == action]

    @property
    def restored_step(self) -> int | None:
        return self.wrapper("restored")[0]["step"]

    @property
    def last_trained(self) -> int:
        return max(self.steps("step"))

    @property
    def newest_finished(self) -> int:
        return max(self.steps("saved"))

    @property
    def newest_committed(self) -> int:
        return max(e["step"] for e in self.wrapper("committed"))


def _attempt_logs(local_airflow, summary) -> list[AttemptLog]:
    run_dir = local_airflow.workdir / "state" / summary["run_key"]
    return [AttemptLog(run_dir / f"attempt-{a['number']}") for a in summary["attempts"]]


@pytest.mark.parametrize("dag_id", ["e2e_byo_hf", "e2e_byo_lightning"])
def test_framework_training_resumes_through_the_synced_folder(local_airflow, dag_id):
    local_airflow.dags_test(dag_id, "2026-02-01T00:00:00+00:00")
    summary = local_airflow.xcom(dag_id, "return_value")
    assert summary["outcome"] == "succeeded"
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "preempted")] * 3 + [("on_demand", "succeeded")]
    assert summary["preemptions"] == 3
    assert [e["at_attempt"] for e in summary["escalations"]] == [4]
    assert "max_preemptions=3" in summary["escalations"][0]["reason"]
    assert summary["final_checkpoint_step"] == 40 and summary["total_steps"] == 40
    assert summary["metrics"]["steps"] == 40

    logs = _attempt_logs(local_airflow, summary)
    attempts = summary["attempts"]
    assert logs[0].restored_step is None
    for before, after, record in zip(logs, logs[1:], attempts[1:]):
        # the wrapper restored what the operator saw as the newest commit, and the training resumed there
        assert after.restored_step == record["start_step"]
        assert [e["resumed_from"] for e in after.events if e.get("event") == "start"] == [record["start_step"]]
    for k in (0, 1):  # reclaimed with a notice: the save at the notice is the resume point, nothing is redone
        assert logs[k].steps("interrupted") == [logs[k].newest_finished]
        assert logs[k + 1].restored_step == logs[k].newest_finished == logs[k].last_trained
    # reclaimed without a notice: the newest checkpoint whose upload had committed is the resume point;
    # the steps after it are trained again
    assert logs[2].steps("interrupted") == []
    assert logs[3].restored_step == logs[2].newest_committed >= 30
    assert logs[3].restored_step <= logs[2].newest_finished <= logs[2].last_trained
    print(f"{dag_id}: recomputed after the reclaim without notice: "
          f"{logs[2].last_trained - logs[3].restored_step} step(s)")


def test_plain_script_resumes_from_its_last_finished_write(local_airflow):
    local_airflow.dags_test("e2e_byo_plain", "2026-02-01T00:00:00+00:00")
    summary = local_airflow.xcom("e2e_byo_plain", "return_value")
    assert summary["outcome"] == "succeeded"
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "preempted"), ("on_demand", "succeeded")]
    first, second = _attempt_logs(local_airflow, summary)
    written = first.newest_committed
    assert written >= 9 and written % 3 == 0
    assert second.restored_step == written == summary["attempts"][1]["start_step"]
    assert second.steps("start") == [written]
    assert summary["final_checkpoint_step"] == 30
    prefix = Path(summary["checkpoint_prefix"])
    final = json.loads((prefix / "step-000000000030" / "state-00000030.json").read_text())
    assert final == {"step": 30, "total": 30 * 29 // 2}  # no step lost or counted twice
