"""The AWS example DAGs import cleanly without AWS credentials or network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[3] / "dags"


@pytest.mark.parametrize("name, backend", [
    ("spot_training_ec2.py", "EC2SpotBackend"),
    ("spot_training_sagemaker.py", "SageMakerSpotBackend"),
])
def test_example_dag_imports_without_credentials(name, backend, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AIRFLOW_CONN_AWS_DEFAULT"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location(name[:-3], DAGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert dag.dag_id == name[:-3] and {"train", "report"} <= set(dag.task_ids)
    assert type(dag.get_task("train").backend).__name__ == backend
    text = (DAGS / name).read_text()
    assert "# [START " in text and "# [END " in text
