"""``ComputeEngineSpotTrainingOperator``: train on Compute Engine spot VMs, escalate to standard VMs."""

from __future__ import annotations

from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend
from airflow_spot_training.operators.backend_operator import BackendOperator


class ComputeEngineSpotTrainingOperator(BackendOperator):
    """Run a training command on a Compute Engine spot VM; relaunch after preemptions, escalate, resume."""

    backend_class = ComputeEngineSpotBackend
