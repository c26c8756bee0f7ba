"""Train as Vertex AI CustomJobs on spot capacity; escalate to STANDARD after two preemptions.

The checkpoint prefix ends in ``/checkpoints`` and each job's ``base_output_directory``
is its parent, so the ``AIP_CHECKPOINT_DIR`` Vertex sets is the same prefix for every
attempt and retry. Set ``GCP_PROJECT_ID`` and ``SPOT_TRAINING_GCS_PREFIX`` before
running it for real; the file imports without credentials. See docs/backends/gcp.md.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

# [START howto_operator_spot_training_vertex_ai]
from airflow_spot_training.operators.vertex_ai import VertexAISpotTrainingOperator

PROJECT_ID = os.environ.get("GCP_PROJECT_ID", "my-project")
GCS_PREFIX = os.environ.get("SPOT_TRAINING_GCS_PREFIX", "gs://my-bucket/spot-training")

with DAG(
    dag_id="spot_training_vertex_ai",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "gcp"],
) as dag:
    train = VertexAISpotTrainingOperator(
        task_id="train",
        project_id=PROJECT_ID,
        region="us-central1",
        machine_type="n1-standard-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
        image_uri=f"us-docker.pkg.dev/{PROJECT_ID}/training/regression:latest",
        args=["--steps", "20000", "--checkpoint-every", "500"],
        checkpoint_prefix=GCS_PREFIX + "/{{ dag.dag_id }}/{{ run_id }}/train/checkpoints",
        max_preemptions=2,
        deadline="8h",
        max_pending_seconds=1800,  # a spot job queued this long counts as "no spot capacity"
        spot_price_per_hour=0.21,
        on_demand_price_per_hour=0.73,
        retries=2,
    )
    # [END howto_operator_spot_training_vertex_ai]
