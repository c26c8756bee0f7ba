"""``EC2SpotTrainingOperator``: :class:`SpotTrainingOperator` on EC2 spot instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_spot_training.backends.ec2 import EC2SpotBackend
from airflow_spot_training.links.aws import EC2InstanceLink
from airflow_spot_training.links.spot_training import CheckpointLink
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_spot_training.core import ledger as L


class EC2SpotTrainingOperator(SpotTrainingOperator):
    """Train on EC2 spot instances, one instance per attempt; escalate to on-demand instances.

    Every argument below is handed to :class:`~airflow_spot_training.backends.ec2.EC2SpotBackend`
    (see it for details); everything else is :class:`SpotTrainingOperator`'s.

    :param command: the training command run on the instance (with ``container_image``,
        the container's arguments).
    :param image_id: the AMI, unless ``launch_template`` names one.
    :param instance_types: instance types to try, in order.
    :param subnet_ids: subnets (AZs) to try for each instance type.
    :param pools: an explicit capacity ladder instead of ``instance_types`` x ``subnet_ids``.
    :param launch_template: ``{"LaunchTemplateName" | "LaunchTemplateId": ..., "Version": ...}``.
    :param container_image: run this image on the instance instead of a host command.
    :param env: extra environment variables for the training.
    :param instance_profile: IAM instance profile name or ARN.
    :param security_group_ids: security groups of the instance.
    :param key_name: EC2 key pair for SSH.
    :param root_volume_gb: root volume size in GiB.
    :param tags: extra tags for instances and volumes.
    :param on_demand_prices: on-demand USD per hour by instance type, for cost and savings.
    :param use_pricing_api: look up missing on-demand prices in the AWS Pricing API.
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the region; default: the connection's.
    :param botocore_config: extra botocore ``Config`` arguments.
    """

    operator_extra_links = (CheckpointLink(), EC2InstanceLink())

    def __init__(
        self,
        *,
        command: str | list[str],
        image_id: str | None = None,
        instance_types: list[str] | None = None,
        subnet_ids: list[str] | None = None,
        pools: list[dict[str, str]] | None = None,
        launch_template: dict[str, str] | None = None,
        container_image: str | None = None,
        env: dict[str, str] | None = None,
        instance_profile: str | None = None,
        security_group_ids: list[str] | None = None,
        key_name: str | None = None,
        root_volume_gb: int | None = None,
        tags: dict[str, str] | None = None,
        on_demand_prices: dict[str, float] | float | None = None,
        use_pricing_api: bool = False,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        botocore_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_spot_training.backends.base import BackendConfigError
        from airflow_spot_training.operators.spot_training import SpotTrainingConfigError

        try:
            backend = EC2SpotBackend(
                command, image_id=image_id, instance_types=instance_types, subnet_ids=subnet_ids, pools=pools,
                launch_template=launch_template, container_image=container_image, env=env,
                instance_profile=instance_profile, security_group_ids=security_group_ids, key_name=key_name,
                root_volume_gb=root_volume_gb, tags=tags, on_demand_prices=on_demand_prices,
                use_pricing_api=use_pricing_api, aws_conn_id=aws_conn_id, region_name=region_name,
                botocore_config=botocore_config,
            )
        except BackendConfigError as e:
            raise SpotTrainingConfigError(f"{kwargs.get('task_id', '?')}: {e}") from e
        super().__init__(backend=backend, **kwargs)
        # the triggerer's shared DescribeInstances runs at the pace the task polls
        backend.describe_interval = self.poll_interval

    def _wait_for_attempt(self, context: Context, ledger: L.RunLedger, record: L.AttemptRecord) -> Any:
        if record.handle:
            EC2InstanceLink.persist(context, region=record.handle.get("region", ""),
                                    instance_id=record.handle.get("instance_id", ""))
        return super()._wait_for_attempt(context, ledger, record)
