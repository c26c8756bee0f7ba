"""What a finished training produced, for the task's return value and its ``outlets=`` assets.

The model's location is, in order: what the backend reported for the succeeded attempt
(SageMaker's ``ModelArtifacts``), the backend's model directory for the run (Vertex AI's
``<base output directory>/model``), or the final committed checkpoint otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

from airflow_spot_training.backends.base import SpotBackend
from airflow_spot_training.core.ledger import RunLedger
from airflow_spot_training.runtime.checkpoint import CheckpointManager

if TYPE_CHECKING:
    from airflow.sdk import Context

#: the summary entries an asset event's extra carries
EXTRA_KEYS = ("model_uri", "checkpoint_uri", "final_step", "total_steps", "metrics", "preemptions", "cost",
              "savings", "run_key", "init_uri")


def is_asset(value: Any) -> bool:
    from airflow.sdk import Asset

    return isinstance(value, Asset)


def model_locations(ledger: RunLedger, backend: SpotBackend) -> dict[str, str | None]:
    """``final_checkpoint_uri`` and ``model_uri`` of a succeeded run."""
    latest = CheckpointManager(ledger.checkpoint_prefix, keep_last=None, attempt=0, token="", init_uri="",
                               storage_options=backend.checkpoint_storage_options()).latest()
    final_checkpoint = latest.uri if latest is not None else None
    record = ledger.current
    reported = record.model_uri if record is not None else None
    return {
        "final_checkpoint_uri": final_checkpoint,
        "model_uri": reported or backend.model_uri(ledger.checkpoint_prefix) or final_checkpoint,
    }


def asset_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The extra of the asset event a succeeded training emits: JSON-safe, from its summary."""
    values = {**summary, "checkpoint_uri": summary.get("final_checkpoint_uri"),
              "final_step": summary.get("final_checkpoint_step")}
    return {key: values.get(key) for key in EXTRA_KEYS}


def emit_asset_events(context: Context, outlets: Iterable[Any], summary: Mapping[str, Any]) -> None:
    """Fill the extra of the event Airflow emits for every ``Asset`` outlet when the task succeeds."""
    assets = [outlet for outlet in outlets or () if is_asset(outlet)]
    events = context.get("outlet_events")
    if not assets or events is None:
        return
    extra = asset_extra(summary)
    for asset in assets:
        events[asset].extra.update(extra)
