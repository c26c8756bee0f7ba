"""Extra links to the Google Cloud console for the attempt a GCP spot-training task runs.

The convenience operators persist the URL of the current attempt's VM or CustomJob
to XCom whenever the task defers or ends (see :func:`persist_attempt_link`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator, Context

CONSOLE = "https://console.cloud.google.com"


def compute_engine_instance_url(handle: dict[str, Any]) -> str | None:
    if not handle.get("zone") or not handle.get("name"):
        return None
    return (f"{CONSOLE}/compute/instancesDetail/zones/{handle['zone']}/instances/{handle['name']}"
            f"?project={handle.get('project', '')}")


def vertex_ai_custom_job_url(handle: dict[str, Any]) -> str | None:
    name = handle.get("name") or ""
    if "/customJobs/" not in name:
        return None
    job_id = name.rsplit("/", 1)[-1]
    return (f"{CONSOLE}/vertex-ai/locations/{handle.get('region', '')}/training/{job_id}/cpu"
            f"?project={handle.get('project', '')}")


class _XComLink(BaseOperatorLink):
    key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value: Any = XCom.get_value(ti_key=ti_key, key=self.key)
        return value or ""


class ComputeEngineInstanceLink(_XComLink):
    """The Compute Engine console page of the VM the current attempt runs on."""

    name = "Compute Engine VM"
    key = "spot_training_compute_engine_instance"


class VertexAICustomJobLink(_XComLink):
    """The Vertex AI console page of the current attempt's CustomJob."""

    name = "Vertex AI CustomJob"
    key = "spot_training_vertex_ai_custom_job"


def persist_attempt_link(context: Context, key: str, url_of: Callable[[dict[str, Any]], str | None]) -> None:
    """Push the console URL of the ledger's current attempt, if it has a handle."""
    from airflow_spot_training.operators.spot_training import LEDGER_KEY

    store = context.get("task_state_store")
    data = store.get(LEDGER_KEY) if store is not None else None
    attempts = (data or {}).get("attempts") or []
    handle = attempts[-1].get("handle") if attempts else None
    url = url_of(handle) if handle else None
    if url:
        context["ti"].xcom_push(key=key, value=url)


def run_and_persist_link(context: Context, key: str, url_of: Callable[[dict[str, Any]], str | None],
                         run: Callable[[], Any]) -> Any:
    """Run an operator entry point; push the attempt's console URL when it defers or ends."""
    try:
        return run()
    finally:
        try:
            persist_attempt_link(context, key, url_of)
        except Exception:  # a link is a convenience; never fail the task over it
            pass
