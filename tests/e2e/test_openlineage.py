"""OpenLineage through the provider's own listener: `airflow dags test` of a training with the OpenLineage
provider configured with the client's file transport; the COMPLETE event's datasets are asserted.

Inputs: the Asset inlet (the training data) and the warm-start checkpoint; outputs: the model
(the final checkpoint on the local backend) and the Asset outlet.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from tests.e2e.conftest import AIRFLOW, ROOT, LocalAirflow

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")
pytestmark = pytest.mark.e2e

DAG_FILE = textwrap.dedent(
    """
    import sys

    import pendulum
    from airflow.sdk import DAG, Asset

    from airflow_spot_training.backends.local import LocalBackend
    from airflow_spot_training.operators.spot_training import SpotTrainingOperator

    with DAG("lineage_training", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             tags=["e2e"]):
        SpotTrainingOperator(
            task_id="train",
            backend=LocalBackend(command=[sys.executable, "-m", "airflow_spot_training.examples.retrain",
                                          "--steps", "4", "--checkpoint-every", "2"]),
            init_from="{{ params.previous }}",  # templated
            params={"previous": "PREVIOUS"},
            inlets=[Asset("s3://training-data/weekly")],
            outlets=[Asset("weekly_model")],
            poll_interval=0.2,
        )
    """
)


@pytest.fixture(scope="module")
def lineage_airflow(tmp_path_factory) -> LocalAirflow:
    from airflow_spot_training.runtime.checkpoint import CheckpointManager

    home = tmp_path_factory.mktemp("airflow-home-lineage")
    workdir = tmp_path_factory.mktemp("e2e-lineage")
    previous = workdir / "previous"
    CheckpointManager(str(previous)).save(3, {"state.json": json.dumps(
        {"step": 3, "weight": 1.0, "loss": 4.0, "last_step": 3}).encode()}, reason="final")
    (workdir / "dags").mkdir()
    (workdir / "dags" / "lineage_training.py").write_text(DAG_FILE.replace("PREVIOUS", str(previous)))
    transport = {"type": "file", "log_file_path": str(workdir / "openlineage.jsonl"), "append": True}
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(workdir / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI": str(workdir / "checkpoints"),
        "AIRFLOW__SPOT_TRAINING__LOCAL_STATE_DIR": str(workdir / "state"),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "spot-training-e2e",
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                     else [])),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return LocalAirflow(home=home, workdir=workdir, env=env)


def _events(lineage_airflow: LocalAirflow) -> list[dict]:
    path = lineage_airflow.workdir / "openlineage.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_complete_event_names_the_input_data_the_warm_start_and_the_model(lineage_airflow):
    lineage_airflow.dags_test("lineage_training", "2026-02-01T00:00:00+00:00")
    summary = lineage_airflow.xcom("lineage_training", "return_value")
    assert summary["outcome"] == "succeeded" and summary["init_step"] == 3
    complete = [e for e in _events(lineage_airflow)
                if e.get("eventType") == "COMPLETE" and e["job"]["name"] == "lineage_training.train"]
    assert len(complete) == 1, [(e.get("eventType"), e.get("job", {}).get("name")) for e in _events(lineage_airflow)]
    inputs = {(d["namespace"], d["name"]) for d in complete[0]["inputs"]}
    outputs = {(d["namespace"], d["name"]) for d in complete[0]["outputs"]}
    assert ("s3://training-data", "weekly") in inputs
    assert ("file", summary["init_uri"]) in inputs
    assert ("file", summary["model_uri"]) in outputs and summary["model_uri"] == summary["final_checkpoint_uri"]
    assert ("airflow", "weekly_model") in outputs
