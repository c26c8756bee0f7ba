"""Result records: how a training attempt tells the operator how it ended.

A bootstrap script (EC2 user data, GCE startup script) writes
``<prefix>/_results/attempt-N.json`` with the exit code; a training script may
write ``<prefix>/_results/attempt-N.metrics.json`` with final metrics, which the
operator copies into its ledger. Plain fsspec, no Airflow.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec

from airflow_spot_training.core.checkpoint_protocol import RESULTS_DIR
from airflow_spot_training.core.contract import Contract, read_contract


def metrics_uri(checkpoint_uri: str, attempt: int) -> str:
    return posixpath.join(checkpoint_uri.rstrip("/"), RESULTS_DIR, f"attempt-{attempt}.metrics.json")


def write_metrics(metrics: dict[str, Any], contract: Contract | None = None, **storage_options: Any) -> str:
    """Record this attempt's final metrics (JSON-able values) for the operator's ledger."""
    contract = contract or read_contract()
    uri = metrics_uri(contract.checkpoint_uri, contract.attempt)
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, json.dumps(metrics, sort_keys=True).encode())
    return uri


def read_metrics(checkpoint_uri: str, attempt: int, **storage_options: Any) -> dict[str, Any] | None:
    return read_json_record(metrics_uri(checkpoint_uri, attempt), **storage_options)


def read_json_record(uri: str, **storage_options: Any) -> dict[str, Any] | None:
    """A JSON record (result or metrics) at ``uri``; ``None`` while it does not exist.

    Raises ``ValueError`` when the record exists but is not JSON.
    """
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
