"""``ComputeEngineSpotTrainingOperator``: train on Compute Engine spot VMs, escalate to standard VMs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_spot_training.backends.base import BackendConfigError
from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend
from airflow_spot_training.backends.google_cloud import DEFAULT_CONN_ID
from airflow_spot_training.links.google_cloud import (
    ComputeEngineInstanceLink,
    compute_engine_instance_url,
    run_and_persist_link,
)
from airflow_spot_training.links.spot_training import CheckpointLink
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError, SpotTrainingOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class ComputeEngineSpotTrainingOperator(SpotTrainingOperator):
    """Run a training command on a Compute Engine spot VM; relaunch after preemptions, escalate, resume.

    A shortcut for ``SpotTrainingOperator(backend=ComputeEngineSpotBackend(...))``; every
    :class:`SpotTrainingOperator` argument (``checkpoint_prefix``, ``max_preemptions``,
    ``deadline``, ...) is accepted as a keyword.

    :param zones: zones to try in order, e.g. ``["us-central1-a", "us-central1-b"]``.
    :param machine_type: the machine type, e.g. ``"n1-standard-8"``.
    :param command: the training command the VM runs (shell string or argument list).
    :param project_id: the project; default: the connection's project.
    :param image: the boot image; default Debian 12.
    :param accelerator_type: GPU type, e.g. ``"nvidia-tesla-t4"``.
    :param accelerator_count: GPUs per VM.
    :param env: extra environment variables for the training.
    :param gcp_conn_id: the Airflow connection (default ``google_cloud_default``).
    :param impersonation_chain: a service account to impersonate, or a chain.
    :param backend_options: any other :class:`ComputeEngineSpotBackend` argument
        (``network``, ``service_account``, ``spot_price_per_hour``, ...).
    """

    operator_extra_links = (CheckpointLink(), ComputeEngineInstanceLink())

    def __init__(
        self,
        *,
        zones: list[str],
        machine_type: str,
        command: str | list[str],
        project_id: str | None = None,
        image: str | None = None,
        accelerator_type: str | None = None,
        accelerator_count: int = 0,
        env: dict[str, str] | None = None,
        gcp_conn_id: str = DEFAULT_CONN_ID,
        impersonation_chain: str | list[str] | None = None,
        backend_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "backend" in kwargs:
            raise SpotTrainingConfigError(
                f"{kwargs.get('task_id')}: ComputeEngineSpotTrainingOperator builds its own backend; pass "
                "zones=, machine_type=, command= and backend_options= instead of backend=.")
        options = dict(backend_options or {})
        if image is not None:
            options["image"] = image
        try:
            backend = ComputeEngineSpotBackend(
                zones=zones, machine_type=machine_type, command=command, project_id=project_id,
                accelerator_type=accelerator_type, accelerator_count=accelerator_count, env=env,
                gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, **options,
            )
        except (BackendConfigError, TypeError) as e:
            raise SpotTrainingConfigError(f"{kwargs.get('task_id')}: {e}") from e
        super().__init__(backend=backend, **kwargs)

    def execute(self, context: Context) -> Any:
        return run_and_persist_link(context, ComputeEngineInstanceLink.key, compute_engine_instance_url,
                                    lambda: super(ComputeEngineSpotTrainingOperator, self).execute(context))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return run_and_persist_link(
            context, ComputeEngineInstanceLink.key, compute_engine_instance_url,
            lambda: super(ComputeEngineSpotTrainingOperator, self).execute_complete(context, event))

    def execute_launch(self, context: Context, event: Any = None) -> Any:
        return run_and_persist_link(
            context, ComputeEngineInstanceLink.key, compute_engine_instance_url,
            lambda: super(ComputeEngineSpotTrainingOperator, self).execute_launch(context, event))
