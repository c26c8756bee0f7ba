"""A 2-node gang through `airflow dags test`: two reclaims, one node each, then a resumed finish."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_a_gang_survives_two_reclaimed_nodes_on_real_airflow(local_airflow):
    local_airflow.dags_test("e2e_gang", "2026-01-02T00:00:00+00:00")

    assert local_airflow.ti("e2e_gang")["state"] == "success"
    summary = local_airflow.xcom("e2e_gang", "return_value")
    assert summary["outcome"] == "succeeded" and summary["preemptions"] == 2
    assert [(a["outcome"], a["nodes"]) for a in summary["attempts"]] == [
        ("preempted", 2), ("preempted", 2), ("succeeded", 2)]
    starts = [a["start_step"] for a in summary["attempts"]]
    assert starts[0] is None and starts[1] >= 30 and starts[2] >= 60
    run_dir = local_airflow.workdir / "state" / summary["run_key"]
    for attempt, start in zip(summary["attempts"], starts):
        for log in ("training.log", "training-node-1.log"):  # every rank started from the same step
            lines = (run_dir / f"attempt-{attempt['number']}" / log).read_text().splitlines()
            first = next(json.loads(line) for line in lines if line.startswith('{"event": "start"'))
            assert first["step"] == (start or 0)
