"""``VertexAISpotTrainingOperator``: train as Vertex AI CustomJobs on spot capacity, escalate to standard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_spot_training import settings
from airflow_spot_training.backends.base import BackendConfigError
from airflow_spot_training.backends.google_cloud import DEFAULT_CONN_ID
from airflow_spot_training.backends.vertex_ai import (
    CHECKPOINT_DIR,
    VertexAISpotBackend,
    base_output_directory,
)
from airflow_spot_training.links.google_cloud import (
    VertexAICustomJobLink,
    run_and_persist_link,
    vertex_ai_custom_job_url,
)
from airflow_spot_training.links.spot_training import CheckpointLink
from airflow_spot_training.operators.spot_training import (
    SpotTrainingConfigError,
    SpotTrainingOperator,
    _is_template,
    default_checkpoint_prefix,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class VertexAISpotTrainingOperator(SpotTrainingOperator):
    """Run a training container as Vertex AI CustomJobs: ``SPOT`` first, ``STANDARD`` after escalation.

    A shortcut for ``SpotTrainingOperator(backend=VertexAISpotBackend(...))``. The checkpoint
    prefix ends in ``/checkpoints`` so that Vertex's ``AIP_CHECKPOINT_DIR`` is the prefix:
    by default ``[spot_training] checkpoint_base_uri``/dag_id/run_id/task_id[/map_index]/checkpoints.
    Every :class:`SpotTrainingOperator` argument is accepted as a keyword.

    :param region: the Vertex AI region, e.g. ``"us-central1"``.
    :param machine_type: the machine type of the worker pool.
    :param image_uri: the training container image.
    :param command: the container's entrypoint override.
    :param args: the container's arguments.
    :param accelerator_type: e.g. ``"NVIDIA_TESLA_T4"``.
    :param accelerator_count: accelerators per replica.
    :param project_id: the project; default: the connection's project.
    :param env: extra environment variables for the container.
    :param gcp_conn_id: the Airflow connection (default ``google_cloud_default``).
    :param impersonation_chain: a service account to impersonate, or a chain.
    :param backend_options: any other :class:`VertexAISpotBackend` argument
        (``worker_pool_specs``, ``service_account``, ``max_pending_seconds``, ...).
    """

    operator_extra_links = (CheckpointLink(), VertexAICustomJobLink())

    def __init__(
        self,
        *,
        region: str,
        machine_type: str | None = None,
        image_uri: str | None = None,
        command: list[str] | None = None,
        args: list[str] | None = None,
        accelerator_type: str | None = None,
        accelerator_count: int = 0,
        project_id: str | None = None,
        env: dict[str, str] | None = None,
        gcp_conn_id: str = DEFAULT_CONN_ID,
        impersonation_chain: str | list[str] | None = None,
        backend_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        task_id = kwargs.get("task_id")
        if "backend" in kwargs:
            raise SpotTrainingConfigError(
                f"{task_id}: VertexAISpotTrainingOperator builds its own backend; pass region=, "
                "machine_type=, image_uri= and backend_options= instead of backend=.")
        prefix = kwargs.get("checkpoint_prefix")
        try:
            if isinstance(prefix, str) and not _is_template(prefix):
                base_output_directory(prefix)
            backend = VertexAISpotBackend(
                region=region, machine_type=machine_type, image_uri=image_uri, command=command, args=args,
                accelerator_type=accelerator_type, accelerator_count=accelerator_count, project_id=project_id,
                env=env, gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain,
                **(backend_options or {}),
            )
        except (BackendConfigError, TypeError) as e:
            raise SpotTrainingConfigError(f"{task_id}: {e}") from e
        super().__init__(backend=backend, **kwargs)

    def execute(self, context: Context) -> Any:
        if not self.checkpoint_prefix:
            ti = context["ti"]
            map_index = getattr(ti, "map_index", -1)
            base = default_checkpoint_prefix(settings.checkpoint_base_uri(), ti.dag_id, ti.run_id, ti.task_id,
                                             -1 if map_index is None else map_index)
            self.checkpoint_prefix = f"{base}/{CHECKPOINT_DIR}"
        return run_and_persist_link(context, VertexAICustomJobLink.key, vertex_ai_custom_job_url,
                                    lambda: super(VertexAISpotTrainingOperator, self).execute(context))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return run_and_persist_link(
            context, VertexAICustomJobLink.key, vertex_ai_custom_job_url,
            lambda: super(VertexAISpotTrainingOperator, self).execute_complete(context, event))

    def execute_launch(self, context: Context, event: Any = None) -> Any:
        return run_and_persist_link(
            context, VertexAICustomJobLink.key, vertex_ai_custom_job_url,
            lambda: super(VertexAISpotTrainingOperator, self).execute_launch(context, event))
