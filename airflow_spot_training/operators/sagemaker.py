"""``SageMakerSpotTrainingOperator``: :class:`SpotTrainingOperator` on SageMaker managed spot training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_spot_training.backends.sagemaker import DEFAULT_LOCAL_PATH, SageMakerSpotBackend
from airflow_spot_training.links.aws import SageMakerTrainingJobLink
from airflow_spot_training.links.spot_training import CheckpointLink
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_spot_training.core import ledger as L


class SageMakerSpotTrainingOperator(SpotTrainingOperator):
    """Train as SageMaker managed spot training jobs; count SageMaker's restarts; escalate to on-demand.

    Unlike the Amazon provider's ``SageMakerTrainingOperator``, it counts interruptions
    (SageMaker restarts a spot job in place), escalates to an on-demand job on the same
    checkpoint ``S3Uri``, re-attaches to the same job on an Airflow retry, and records
    billable against training seconds. Arguments below go to
    :class:`~airflow_spot_training.backends.sagemaker.SageMakerSpotBackend`.

    :param image_uri: the training image.
    :param role_arn: the SageMaker execution role.
    :param instance_type: the ML instance type.
    :param instance_count: instances per job.
    :param volume_size_gb: ML storage volume per instance.
    :param max_runtime: ``MaxRuntimeInSeconds``.
    :param max_wait: ``MaxWaitTimeInSeconds`` of spot jobs (>= ``max_runtime``).
    :param command: ``ContainerEntrypoint`` override.
    :param arguments: ``ContainerArguments``.
    :param hyperparameters: string-valued hyperparameters.
    :param environment: extra environment variables.
    :param input_data_config: ``InputDataConfig`` channels.
    :param output_s3_uri: ``OutputDataConfig.S3OutputPath``.
    :param job_name_prefix: job names are ``<prefix>-<run key>-a<attempt>``.
    :param checkpoint_local_path: ``CheckpointConfig.LocalPath``.
    :param vpc_config: ``VpcConfig``.
    :param tags: extra job tags.
    :param on_demand_price_per_hour: USD per instance-hour, for cost and savings.
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the region; default: the connection's.
    :param botocore_config: extra botocore ``Config`` arguments.
    """

    operator_extra_links = (CheckpointLink(), SageMakerTrainingJobLink())

    def __init__(
        self,
        *,
        image_uri: str,
        role_arn: str,
        instance_type: str,
        instance_count: int = 1,
        volume_size_gb: int = 50,
        max_runtime: int = 24 * 3600,
        max_wait: int | None = None,
        command: list[str] | None = None,
        arguments: list[str] | None = None,
        hyperparameters: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        input_data_config: list[dict[str, Any]] | None = None,
        output_s3_uri: str | None = None,
        job_name_prefix: str = "spot-training",
        checkpoint_local_path: str = DEFAULT_LOCAL_PATH,
        vpc_config: dict[str, list[str]] | None = None,
        tags: dict[str, str] | None = None,
        on_demand_price_per_hour: float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        botocore_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_spot_training.backends.base import BackendConfigError
        from airflow_spot_training.operators.spot_training import SpotTrainingConfigError

        try:
            backend = SageMakerSpotBackend(
                image_uri=image_uri, role_arn=role_arn, instance_type=instance_type,
                instance_count=instance_count, volume_size_gb=volume_size_gb, max_runtime=max_runtime,
                max_wait=max_wait, command=command, arguments=arguments, hyperparameters=hyperparameters,
                environment=environment, input_data_config=input_data_config, output_s3_uri=output_s3_uri,
                job_name_prefix=job_name_prefix, checkpoint_local_path=checkpoint_local_path,
                vpc_config=vpc_config, tags=tags, on_demand_price_per_hour=on_demand_price_per_hour,
                aws_conn_id=aws_conn_id, region_name=region_name, botocore_config=botocore_config,
            )
        except BackendConfigError as e:
            raise SpotTrainingConfigError(f"{kwargs.get('task_id', '?')}: {e}") from e
        super().__init__(backend=backend, **kwargs)

    def _wait_for_attempt(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord) -> Any:
        if record.handle:
            SageMakerTrainingJobLink.persist(context, region=record.handle.get("region", ""),
                                             job_name=record.handle.get("job_name", ""))
        return super()._wait_for_attempt(context, ledger, record)
