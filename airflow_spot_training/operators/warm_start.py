"""Warm start (``init_from=``): which committed checkpoint of an earlier run a new run starts from.

The operator resolves ``init_from`` once per run, when it opens the run's ledger, to one
committed checkpoint (a ``step-N`` directory) and keeps it in the ledger, so every attempt
and Airflow retry of the run is handed the same ``init_uri`` in its contract. The training's
runtime loads it only while the run's own prefix holds no checkpoint
(:meth:`~airflow_spot_training.runtime.checkpoint.CheckpointManager.resume_point`); its own
checkpoints always go to the run's prefix.

Sources:

* a checkpoint prefix (``"s3://bucket/runs/2026-01-05/train"``): its newest committed checkpoint,
  or a step directory itself (``.../step-000000000200``);
* an :class:`~airflow.sdk.Asset`: the ``checkpoint_uri`` of its newest asset event (what this
  operator's ``outlets=`` emit);
* ``"last_success"``: the final checkpoint of this task in the newest earlier run in which it
  succeeded (read from that run's return value, through XCom with ``include_prior_dates``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from airflow_spot_training.backends.base import BackendConfigError, SpotBackend, is_template
from airflow_spot_training.core.checkpoint_protocol import parse_step_dir
from airflow_spot_training.operators.model_asset import is_asset
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager, read_checkpoint

if TYPE_CHECKING:
    from airflow.sdk import Context

LAST_SUCCESS = "last_success"
#: what ``init_from_missing=`` may say when the warm-start checkpoint cannot be used
ON_MISSING = ("fail", "scratch")


class WarmStartError(ValueError):
    """``init_from`` names nothing a run can start from; the message says what and how to fix it."""


@dataclass(frozen=True)
class WarmStart:
    """The checkpoint a run starts from: its step directory and step."""

    uri: str
    step: int


def check_init_from(init_from: Any, init_from_missing: Any, backend: SpotBackend) -> None:
    """Parse-time checks of ``init_from=`` and ``init_from_missing=``; raise :class:`WarmStartError`."""
    if init_from_missing not in ON_MISSING:
        raise WarmStartError(
            f"init_from_missing={init_from_missing!r} is invalid: give 'fail' (the task fails when the warm-start "
            "checkpoint is missing or unreadable) or 'scratch' (it starts from scratch instead)."
        )
    if init_from is None or init_from == LAST_SUCCESS or is_asset(init_from):
        return
    if not isinstance(init_from, str) or not init_from:
        raise WarmStartError(
            f"init_from={init_from!r} is invalid: give a checkpoint prefix (a path or an fsspec URL), "
            f"an Asset, or {LAST_SUCCESS!r} (the final checkpoint of this task's last successful run)."
        )
    if not is_template(init_from):
        check_prefix(init_from, backend)


def check_prefix(uri: str, backend: SpotBackend) -> None:
    try:
        backend.check_checkpoint_prefix(uri)
    except BackendConfigError as e:
        raise WarmStartError(f"init_from: {e}".replace("checkpoint_prefix ", "", 1)) from e


def resolve(init_from: Any, context: Context, backend: SpotBackend) -> WarmStart:
    """The committed checkpoint ``init_from`` names now; raise :class:`WarmStartError` if there is none."""
    uri = _source_uri(init_from, context)
    check_prefix(uri, backend)
    options = backend.checkpoint_storage_options()
    try:
        if parse_step_dir(uri) is None:  # a prefix: its newest committed checkpoint
            latest = CheckpointManager(uri, keep_last=None, storage_options=options, attempt=0, token="",
                                       init_uri="").latest()
            if latest is None:
                raise WarmStartError(f"init_from={init_from!r}: no committed checkpoint under {uri}.")
            return WarmStart(latest.uri, latest.step)
        checkpoint = read_checkpoint(uri, options)
    except (CheckpointError, OSError, ValueError) as e:
        if isinstance(e, WarmStartError):
            raise
        raise WarmStartError(f"init_from={init_from!r}: {e}") from e
    return WarmStart(checkpoint.uri, checkpoint.step)


def _source_uri(init_from: Any, context: Context) -> str:
    if init_from == LAST_SUCCESS:
        return _last_success_uri(context)
    if is_asset(init_from):
        return _asset_uri(init_from, context)
    return str(init_from)


def _last_success_uri(context: Context) -> str:
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    previous = ti.xcom_pull(task_ids=ti.task_id, key="return_value", include_prior_dates=True,
                            map_indexes=-1 if map_index is None else map_index)
    uri = previous.get("final_checkpoint_uri") if isinstance(previous, Mapping) else None
    if not uri:
        raise WarmStartError(
            f"init_from={LAST_SUCCESS!r}: no earlier successful run of {ti.dag_id}.{ti.task_id} with a final "
            "checkpoint (its return value names final_checkpoint_uri). Run it once without init_from, or give "
            "init_from_missing='scratch' to start the first run from scratch."
        )
    return str(uri)


def _asset_uri(asset: Any, context: Context) -> str:
    events = list((context.get("inlet_events") or {}).get(asset) or [])  # type: ignore[union-attr]
    for event in reversed(events):
        extra = getattr(event, "extra", None) or {}
        uri = extra.get("checkpoint_uri") or extra.get("model_uri")
        if uri:
            return str(uri)
    raise WarmStartError(
        f"init_from=Asset({asset.name!r}): it has no asset event whose extra names a checkpoint_uri (the "
        "events SpotTrainingOperator emits through outlets= do). Give init_from_missing='scratch' to start from "
        "scratch until one exists."
    )
