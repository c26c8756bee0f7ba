"""Records a training attempt leaves for the operator, under its checkpoint prefix.

* ``_results/attempt-N.json``: how the attempt ended (exit code, token), written by a
  bootstrap script (EC2 user data, GCE startup script);
* ``_results/attempt-N.metrics.json``: the training's final metrics (:func:`write_metrics`),
  which the operator copies into its ledger;
* ``_progress/attempt-N.json``: the last step the training reported executing
  (:meth:`~airflow_spot_training.runtime.checkpoint.CheckpointManager.report_progress`).

Plain fsspec, no Airflow. A record that exists but is not a JSON object raises
:class:`MalformedRecord`, which names the file.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from typing import Any

import fsspec

from airflow_spot_training.core.checkpoint_protocol import RESULTS_DIR, progress_record_name
from airflow_spot_training.core.contract import Contract

log = logging.getLogger(__name__)


class MalformedRecord(ValueError):
    """A record exists but cannot be read as a JSON object; the message names the file."""

    def __init__(self, uri: str, why: str) -> None:
        super().__init__(f"the record {uri} is malformed ({why}); it was written by something other than "
                         "this provider's bootstrap or runtime, or cut short")
        self.uri = uri


def metrics_uri(checkpoint_uri: str, attempt: int) -> str:
    return posixpath.join(checkpoint_uri.rstrip("/"), RESULTS_DIR, f"attempt-{attempt}.metrics.json")


def json_safe_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics with NaN and infinite values replaced by ``None`` (JSON cannot carry them), with a warning."""
    clean = {}
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            log.warning("the training's metric %r is %r, which JSON cannot carry: it is reported as null", name, value)
            value = None
        clean[str(name)] = value
    return clean


def write_metrics(metrics: dict[str, Any], contract: Contract | None = None, **storage_options: Any) -> str:
    """Record this attempt's final metrics (JSON-able values) for the operator's ledger.

    A NaN or infinite value is written as it is; the operator reports it as ``null``
    with a warning in the task log (a diverged metric never makes the run fail).
    """
    if contract is None:
        from airflow_spot_training.runtime.secrets import read_contract

        contract = read_contract(resolve=False)
    uri = metrics_uri(contract.checkpoint_uri, contract.attempt)
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, json.dumps(metrics, sort_keys=isinstance(metrics, dict)).encode())
    return uri


def read_metrics(checkpoint_uri: str, attempt: int, **storage_options: Any) -> dict[str, Any] | None:
    """The attempt's final metrics; ``None`` (with a warning naming the file) when they are not an object."""
    try:
        record = read_json_record(metrics_uri(checkpoint_uri, attempt), **storage_options)
    except MalformedRecord as e:  # metrics are informative: the run still succeeds
        log.warning("ignoring the training's metrics: %s", e)
        return None
    return json_safe_metrics(record) if record is not None else None


def read_progress(checkpoint_uri: str, attempt: int, attempt_token: str, **storage_options: Any) -> int | None:
    """The last step attempt ``attempt`` reported, if it reported one under its ``attempt_token``."""
    uri = posixpath.join(checkpoint_uri.rstrip("/"), progress_record_name(attempt))
    record = read_json_record(uri, **storage_options)
    if record is None or record.get("token") != attempt_token or not isinstance(record.get("step"), int):
        return None
    return int(record["step"])


def read_json_record(uri: str, **storage_options: Any) -> dict[str, Any] | None:
    """A JSON record (result, metrics or progress) at ``uri``; ``None`` while it does not exist.

    Raises :class:`MalformedRecord` when the record exists but is not a JSON object.
    """
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise MalformedRecord(uri, f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedRecord(uri, f"a JSON {type(data).__name__}, not an object")
    return data
