"""The GCP example DAGs import without GCP credentials and build their operators."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[3] / "dags"


@pytest.mark.parametrize(
    ("filename", "operator"),
    [
        ("spot_training_compute_engine.py", "ComputeEngineSpotTrainingOperator"),
        ("spot_training_vertex_ai.py", "VertexAISpotTrainingOperator"),
    ],
)
def test_example_dag_imports_without_credentials(filename, operator, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    spec = importlib.util.spec_from_file_location(filename[:-3], DAGS / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    task = dag.get_task("train")
    assert type(task).__name__ == operator
    classpath, kwargs = task.backend.serialize()
    assert task.backend.storage_options is None and kwargs["emulator_host"] is None
    text = (DAGS / filename).read_text()
    assert "# [START howto_operator_spot_training_" in text and "# [END howto_operator_spot_training_" in text
