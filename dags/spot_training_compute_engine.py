"""Train on Compute Engine spot VMs; after two preemptions, finish on a standard VM.

Each attempt is one VM running the packaged startup script, which hands the training
the environment contract (``SPOT_TRAINING_CHECKPOINT_URI`` and friends), writes the
result record under the checkpoint prefix, and deletes the VM. Zones are tried in
order when one is out of spot capacity. Set ``GCP_PROJECT_ID`` and
``SPOT_TRAINING_GCS_PREFIX`` (a ``gs://`` path) before running it for real; the file
imports without credentials. See docs/backends/gcp.md.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

# [START howto_operator_spot_training_compute_engine]
from airflow_spot_training.operators.compute_engine import ComputeEngineSpotTrainingOperator

PROJECT_ID = os.environ.get("GCP_PROJECT_ID", "my-project")
GCS_PREFIX = os.environ.get("SPOT_TRAINING_GCS_PREFIX", "gs://my-bucket/spot-training")

with DAG(
    dag_id="spot_training_compute_engine",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "gcp"],
) as dag:
    train = ComputeEngineSpotTrainingOperator(
        task_id="train",
        project_id=PROJECT_ID,
        zones=["us-central1-a", "us-central1-b", "us-central1-f"],  # tried in order
        machine_type="g2-standard-8",
        accelerator_type="nvidia-l4",
        accelerator_count=1,
        image="projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310",
        command="pip install -q 'airflow-spot-training[runtime,torch]' gcsfs && "
        "python3 -m airflow_spot_training.examples.regression --steps 20000 --checkpoint-every 500",
        checkpoint_prefix=GCS_PREFIX + "/{{ dag.dag_id }}/{{ run_id }}/train",
        max_preemptions=2,  # the third attempt runs on a STANDARD VM
        deadline="8h",
        service_account=f"spot-trainer@{PROJECT_ID}.iam.gserviceaccount.com",  # see docs/backends/gcp.md
        spot_price_per_hour=0.32,  # for the ledger's cost and savings figures
        on_demand_price_per_hour=0.98,
        retries=2,  # a retry re-attaches to the running VM, or resumes from the checkpoints
    )
    # [END howto_operator_spot_training_compute_engine]
