"""Docs stay true: quoted example code matches the DAG files, and every operator argument is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"<!-- quote: (?P<file>\S+) (?P<name>\S+) -->\n```python\n(?P<body>.*?)```", re.S)


def _snippet(path: Path, name: str) -> str:
    text = path.read_text()
    start = text.index(f"# [START {name}]\n") + len(f"# [START {name}]\n")
    end = text.index(f"# [END {name}]")
    lines = text[start:end].rstrip().splitlines()
    indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
    return "\n".join(l[indent:] if l.strip() else "" for l in lines).strip()


def _quotes():
    for doc in sorted((ROOT / "docs").rglob("*.md")):
        for m in QUOTE.finditer(doc.read_text()):
            yield pytest.param(doc, m, id=f"{doc.name}:{m.group('name')}")


@pytest.mark.parametrize("doc, match", list(_quotes()))
def test_quoted_code_matches_the_dag_file(doc, match):
    source = ROOT / match.group("file")
    assert match.group("body").strip() == _snippet(source, match.group("name")), (
        f"{doc.name} quotes {match.group('name')} from {source.name}, but the DAG file says otherwise"
    )


def test_docs_quote_at_least_the_local_demo():
    assert any("howto_operator_spot_training_local" in p.id for p in _quotes())


def test_every_operator_argument_is_in_the_reference():
    from airflow_spot_training.operators.spot_training import SpotTrainingOperator

    reference = (ROOT / "docs" / "reference.md").read_text()
    params = [p for p in inspect.signature(SpotTrainingOperator.__init__).parameters if p not in ("self", "kwargs")]
    missing = [p for p in params if f"| `{p}` |" not in reference]
    assert not missing, f"undocumented SpotTrainingOperator arguments: {missing}"
    docstring = SpotTrainingOperator.__doc__ or ""
    assert not [p for p in params if f":param {p}:" not in docstring]


def test_backend_argument_tables_are_generated_from_the_declarations():
    import subprocess
    import sys

    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_reference.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, "docs/reference.md is stale: run python scripts/update_reference.py"


@pytest.mark.parametrize("module, name", [
    ("airflow_spot_training.operators.ec2", "EC2SpotTrainingOperator"),
    ("airflow_spot_training.operators.sagemaker", "SageMakerSpotTrainingOperator"),
    ("airflow_spot_training.operators.compute_engine", "ComputeEngineSpotTrainingOperator"),
    ("airflow_spot_training.operators.vertex_ai", "VertexAISpotTrainingOperator"),
])
def test_every_convenience_operator_documents_its_backend_arguments(module, name):
    import importlib

    operator = getattr(importlib.import_module(module), name)
    missing = [arg for arg in operator.backend_class.model_fields if f":param {arg}:" not in (operator.__doc__ or "")]
    assert not missing, f"{name} does not document {missing}"
