"""``EC2SpotTrainingOperator``: :class:`SpotTrainingOperator` on EC2 spot instances."""

from __future__ import annotations

from airflow_spot_training.backends.ec2 import EC2SpotBackend
from airflow_spot_training.operators.backend_operator import BackendOperator


class EC2SpotTrainingOperator(BackendOperator):
    """Train on EC2 spot instances, one instance per attempt; escalate to on-demand instances."""

    backend_class = EC2SpotBackend
