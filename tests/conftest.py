"""Shared fixtures: a moto server on loopback for the AWS tests (see tests/aws_cloud.py)."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest

from tests import aws_cloud


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server, endpoint = aws_cloud.start_server()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A fresh moto account reached through ``aws_default``, with a checkpoint bucket."""
    import boto3
    import requests

    from airflow_spot_training.backends.aws_connection import clear_storage_options_cache

    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10)
    clear_storage_options_cache()
    for key, value in aws_cloud.connection_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # the tests' own boto3 calls
    monkeypatch.setenv("AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI", f"s3://{aws_cloud.BUCKET}/runs")
    s3 = boto3.client("s3", region_name=aws_cloud.REGION)
    s3.create_bucket(Bucket=aws_cloud.BUCKET)
    yield {"endpoint": moto_endpoint, "bucket": aws_cloud.BUCKET, "storage_options": _storage(moto_endpoint)}
    os.environ.pop("AWS_ENDPOINT_URL", None)


def _storage(endpoint: str) -> dict[str, Any]:
    return {"key": "testing", "secret": "testing", "token": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": aws_cloud.REGION}}
