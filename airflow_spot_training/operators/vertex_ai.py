"""``VertexAISpotTrainingOperator``: train as Vertex AI CustomJobs on spot capacity, escalate to standard."""

from __future__ import annotations

from airflow_spot_training.backends.vertex_ai import VertexAISpotBackend
from airflow_spot_training.operators.backend_operator import BackendOperator


class VertexAISpotTrainingOperator(BackendOperator):
    """Run a training container as Vertex AI CustomJobs: ``SPOT`` first, ``STANDARD`` after escalation.

    The checkpoint prefix ends in ``/checkpoints`` so that Vertex's ``AIP_CHECKPOINT_DIR`` is
    the prefix: by default ``[spot_training] checkpoint_base_uri``/dag_id/run_id/task_id[/map_index]/checkpoints.
    """

    backend_class = VertexAISpotBackend
