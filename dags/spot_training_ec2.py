"""EC2 example: train on spot instances, fall back across pools, escalate to on-demand.

Each attempt runs on its own instance. The instance runs the shipped user-data
bootstrap: it exports the environment contract, runs the command, writes the
result record under the checkpoint prefix and shuts down (which terminates it).
Set the ``aws_default`` connection, an AMI with Python and the training installed,
subnets in the AZs you accept, and an instance profile that can write to the bucket.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

# [START howto_operator_ec2_spot_training]
from airflow_spot_training.core.ledger import format_summary
from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator

BUCKET = os.environ.get("SPOT_TRAINING_BUCKET", "my-training-bucket")

with DAG(
    dag_id="spot_training_ec2",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot-training", "aws", "example"],
) as dag:
    train = EC2SpotTrainingOperator(
        task_id="train",
        command="python3 -m airflow_spot_training.examples.regression --steps 20000 --checkpoint-every 500",
        image_id=os.environ.get("SPOT_TRAINING_AMI", "ami-0123456789abcdef0"),
        # the capacity ladder: every instance type in every subnet, in this order
        instance_types=["g5.xlarge", "g6.xlarge", "g4dn.xlarge"],
        subnet_ids=["subnet-0aaa1111bbbb2222c", "subnet-0ddd3333eeee4444f"],
        instance_profile="spot-training-instance",
        security_group_ids=["sg-0123456789abcdef0"],
        root_volume_gb=100,
        tags={"team": "ml"},
        on_demand_prices={"g5.xlarge": 1.006, "g6.xlarge": 0.805, "g4dn.xlarge": 0.526},
        checkpoint_prefix=f"s3://{BUCKET}/checkpoints/{{{{ dag.dag_id }}}}/{{{{ run_id }}}}",
        max_preemptions=3,
        deadline="12h",
        poll_interval=30,
        retries=2,
    )
    # [END howto_operator_ec2_spot_training]

    @task
    def report(summary: dict) -> str:
        """Print the ledger: attempts, preemptions, escalation, cost and savings."""
        text = format_summary(summary)
        print(text)
        return text

    report(train.output)
