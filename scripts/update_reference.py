"""Write the backend argument tables of docs/reference.md from the backends' declarations.

    .venv/bin/python scripts/update_reference.py          # rewrite the tables
    .venv/bin/python scripts/update_reference.py --check  # exit 1 if a table is stale

Each backend declares its arguments once (``airflow_spot_training/backends/<name>.py``);
this script renders them between ``<!-- arguments: ClassName -->`` and
``<!-- end arguments -->`` markers, and ``tests/test_docs.py`` checks they are current.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE = ROOT / "docs" / "reference.md"
BLOCK = re.compile(r"(<!-- arguments: (?P<name>\w+) -->\n)(?P<body>.*?)(<!-- end arguments -->)", re.S)
BACKENDS = {
    "LocalBackend": "airflow_spot_training.backends.local",
    "EC2SpotBackend": "airflow_spot_training.backends.ec2",
    "SageMakerSpotBackend": "airflow_spot_training.backends.sagemaker",
    "ComputeEngineSpotBackend": "airflow_spot_training.backends.compute_engine",
    "VertexAISpotBackend": "airflow_spot_training.backends.vertex_ai",
}


def type_name(annotation: object) -> str:
    """A readable type: ``list[str] | None`` rather than typing's reprs (``Annotated`` stripped)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: typing.Any) -> str:
    if info.is_required():
        return "required"
    return f"`{info.default!r}`"


def backend_table(cls: type) -> str:
    rows = ["| argument | type | default | meaning |", "|---|---|---|---|"]
    for name, info in cls.model_fields.items():
        meaning = (info.description or "").replace("|", "\\|")
        if name in cls.template_fields:
            meaning += " (templated)"
        kind = type_name(info.annotation).replace("|", "\\|")
        rows.append(f"| `{name}` | `{kind}` | {default_text(info)} | {meaning} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    def table(match: re.Match) -> str:
        cls = getattr(importlib.import_module(BACKENDS[match.group("name")]), match.group("name"))
        return match.group(1) + backend_table(cls) + match.group(4)

    return BLOCK.sub(table, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the tables are current")
    args = parser.parse_args()
    current = REFERENCE.read_text()
    fresh = render(current)
    if args.check:
        return 0 if fresh == current else 1
    REFERENCE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
