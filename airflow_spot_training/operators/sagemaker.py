"""``SageMakerSpotTrainingOperator``: :class:`SpotTrainingOperator` on SageMaker managed spot training."""

from __future__ import annotations

from airflow_spot_training.backends.sagemaker import SageMakerSpotBackend
from airflow_spot_training.operators.backend_operator import BackendOperator


class SageMakerSpotTrainingOperator(BackendOperator):
    """Train as SageMaker managed spot training jobs; count SageMaker's restarts; escalate to on-demand.

    Unlike the Amazon provider's ``SageMakerTrainingOperator``, it counts interruptions
    (SageMaker restarts a spot job in place), escalates to an on-demand job on the same
    checkpoint ``S3Uri``, re-attaches to the same job on an Airflow retry, and records
    billable against training seconds.
    """

    backend_class = SageMakerSpotBackend
