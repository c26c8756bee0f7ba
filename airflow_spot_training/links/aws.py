"""Extra links to the AWS console for the attempt a task is running."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator, Context


class _AttemptConsoleLink(BaseOperatorLink):
    """A console URL pushed to XCom before the task defers."""

    name = ""
    key = ""
    format_str = ""

    @classmethod
    def url(cls, **fields: Any) -> str:
        return cls.format_str.format(**fields)

    @classmethod
    def persist(cls, context: Context, **fields: Any) -> None:
        context["ti"].xcom_push(key=cls.key, value=cls.url(**fields))

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value: Any = XCom.get_value(ti_key=ti_key, key=self.key)
        return value or ""


class EC2InstanceLink(_AttemptConsoleLink):
    """The EC2 console page of the instance the current attempt runs on."""

    name = "EC2 Instance"
    key = "spot_training_ec2_instance"
    format_str = "https://console.aws.amazon.com/ec2/home?region={region}#InstanceDetails:instanceId={instance_id}"


class SageMakerTrainingJobLink(_AttemptConsoleLink):
    """The SageMaker console page of the current attempt's training job."""

    name = "SageMaker Training Job"
    key = "spot_training_sagemaker_job"
    format_str = "https://console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{job_name}"
