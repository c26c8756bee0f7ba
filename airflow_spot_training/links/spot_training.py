"""Extra links shown on spot-training task instances in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator, Context


def browse_url(prefix: str) -> str:
    """A URL where a person can look at a checkpoint prefix."""
    if prefix.startswith("s3://"):
        bucket, _, key = prefix[5:].partition("/")
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={key.rstrip('/')}/"
    if prefix.startswith("gs://"):
        return f"https://console.cloud.google.com/storage/browser/{prefix[5:].rstrip('/')}"
    if "://" in prefix:
        return prefix
    return f"file://{prefix}"


class CheckpointLink(BaseOperatorLink):
    """Where the task's checkpoints are: the S3 / GCS console, or a file URL."""

    name = "Checkpoints"
    key = "spot_training_checkpoint_link"

    @classmethod
    def persist(cls, context: Context, prefix: str) -> None:
        context["ti"].xcom_push(key=cls.key, value=browse_url(prefix))

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value: Any = XCom.get_value(ti_key=ti_key, key=self.key)
        return value or ""
