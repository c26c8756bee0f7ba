"""SageMaker example: managed spot training that counts interruptions and escalates.

SageMaker restarts an interrupted spot job by itself; the operator counts those
restarts and, past ``max_preemptions``, stops the spot job and creates an on-demand
job on the same checkpoint ``S3Uri``, which resumes from the same checkpoints.
The ledger records billable against training seconds: the measured savings.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

# [START howto_operator_sagemaker_spot_training]
from airflow_spot_training.core.ledger import format_summary
from airflow_spot_training.operators.sagemaker import SageMakerSpotTrainingOperator

BUCKET = os.environ.get("SPOT_TRAINING_BUCKET", "my-training-bucket")

with DAG(
    dag_id="spot_training_sagemaker",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "aws", "example"],
) as dag:
    train = SageMakerSpotTrainingOperator(
        task_id="train",
        image_uri=os.environ.get("SPOT_TRAINING_IMAGE", "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest"),
        role_arn=os.environ.get("SPOT_TRAINING_ROLE", "arn:aws:iam::123456789012:role/SageMakerTraining"),
        instance_type="ml.g5.xlarge",
        max_runtime=6 * 3600,
        max_wait=12 * 3600,
        hyperparameters={"epochs": "20"},
        on_demand_price_per_hour=1.408,
        checkpoint_prefix=f"s3://{BUCKET}/checkpoints/{{{{ dag.dag_id }}}}/{{{{ run_id }}}}",
        max_preemptions=3,
        deadline="1d",
        poll_interval=60,
        retries=2,
    )
    # [END howto_operator_sagemaker_spot_training]

    @task
    def report(summary: dict) -> str:
        """Print the ledger, including SageMaker's measured savings per job."""
        text = format_summary(summary)
        print(text)
        return text

    report(train.output)
