"""Every file in dags/ imports cleanly, defines a DAG, and has no import errors."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_dag_file_imports_cleanly(path):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path), safe_mode=False)
    assert bag.import_errors == {}, bag.import_errors
    assert bag.dags, f"{path.name} defines no DAG"
    for dag in bag.dags.values():
        assert dag.tags, f"{dag.dag_id} has no tags"


def test_there_are_example_dags():
    assert (DAGS / "spot_training_local_demo.py").exists()
