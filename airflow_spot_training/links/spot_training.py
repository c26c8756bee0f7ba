"""Extra links shown on spot-training task instances in the Airflow UI.

Airflow 3 shows an extra link by reading the XCom stored under the link's
``xcom_key`` (the worker pushes ``get_link()`` there when the try ends). These links
push their URL under that very key as soon as it is known, so a link works while the
task is still deferred, and every try publishes again what the ledger holds (XCom is
cleared when a try starts).

* :class:`CheckpointLink`: where the checkpoints are.
* :class:`AttemptPageLink`: one page (console, logs) of one attempt. An operator declares
  one per attempt slot and label; the UI hides those without a URL, so a task shows
  exactly the attempts it launched: "Attempt 01: EC2 instance", "Attempt 02: EC2 instance", ...
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs
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


def _pushed(ti_key: TaskInstanceKey, key: str) -> str:
    from airflow.sdk.execution_time.xcom import XCom

    value: Any = XCom.get_value(ti_key=ti_key, key=key)
    return value if isinstance(value, str) else ""


class CheckpointLink(BaseOperatorLink):
    """Where the task's checkpoints are: the S3 / GCS console, or a file URL."""

    name = "Checkpoints"

    @property
    def xcom_key(self) -> str:
        return "spot_training_checkpoint_link"

    def persist(self, context: Context, prefix: str) -> None:
        context["ti"].xcom_push(key=self.xcom_key, value=browse_url(prefix))

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return _pushed(ti_key, self.xcom_key)


@attrs.define
class AttemptPageLink(BaseOperatorLink):
    """Page ``label`` of attempt number ``attempt`` (its console page, its logs)."""

    attempt: int = 1
    label: str = "Console"

    @property
    def name(self) -> str:  # zero-padded: the UI sorts links by name
        return f"Attempt {self.attempt:02d}: {self.label}"

    @property
    def xcom_key(self) -> str:
        return f"spot_training_attempt_{self.attempt}_{_slug(self.label)}"

    def persist(self, context: Context, url: str) -> None:
        context["ti"].xcom_push(key=self.xcom_key, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return _pushed(ti_key, self.xcom_key)


def attempt_page_links(labels: tuple[str, ...], max_attempts: int) -> tuple[AttemptPageLink, ...]:
    """One link per attempt slot and label, for an operator's ``operator_extra_links``."""
    return tuple(AttemptPageLink(attempt=n, label=label) for n in range(1, max_attempts + 1) for label in labels)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
