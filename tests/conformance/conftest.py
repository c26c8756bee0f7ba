"""Fixtures of the conformance suite: one cloud with machines per backend (see clouds.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conformance.clouds import (
    Cloud,
    ComputeEngineCloud,
    EC2Cloud,
    LocalCloud,
    SageMakerCloud,
    VertexAICloud,
)
from tests.conformance.imds import FakeIMDS


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


@pytest.fixture(scope="session")
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS() as server:
        yield server


@pytest.fixture
def cloud(request: pytest.FixtureRequest, tmp_path: Path, imds: FakeIMDS,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """The backend named by the test's parameter, on its cloud, with machines that really train."""
    name = request.param
    built: Cloud
    if name == "local":
        built = LocalCloud(tmp_path, imds)
    elif name in ("ec2", "sagemaker"):
        aws: dict[str, Any] = request.getfixturevalue("aws")
        built = (EC2Cloud if name == "ec2" else SageMakerCloud)(tmp_path, imds, aws, monkeypatch)
    elif name == "compute_engine":
        built = ComputeEngineCloud(tmp_path, imds)
    else:
        built = VertexAICloud(tmp_path, imds)
    try:
        yield built
    finally:
        built.close()
    if built.fleet.errors:
        raise AssertionError(f"the {name} cloud's machines failed: {built.fleet.errors!r}")
