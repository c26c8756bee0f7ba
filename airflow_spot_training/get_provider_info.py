"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

INTEGRATION = "Spot Training"


def get_provider_info() -> dict[str, Any]:
    from airflow_spot_training import __version__

    return {
        "package-name": "airflow-spot-training",
        "name": "Spot Training",
        "description": "Train on spot / preemptible capacity: survive preemptions, escalate to on-demand, "
        "resume from checkpoints, finish by a deadline.",
        "versions": [__version__],
        "integrations": [{"integration-name": INTEGRATION, "tags": ["ml", "spot", "aws", "gcp"]}],
        "operators": [{"integration-name": INTEGRATION, "python-modules": [
            "airflow_spot_training.operators.spot_training",
            "airflow_spot_training.operators.ec2",
            "airflow_spot_training.operators.sagemaker",
            "airflow_spot_training.operators.compute_engine",
            "airflow_spot_training.operators.vertex_ai",
        ]}],
        "triggers": [{"integration-name": INTEGRATION,
                      "python-modules": ["airflow_spot_training.triggers.spot_training"]}],
        "extra-links": [
            "airflow_spot_training.links.spot_training.CheckpointLink",
            "airflow_spot_training.links.spot_training.AttemptPageLink",
        ],
        "plugins": [{"name": "spot_training", "plugin-class": "airflow_spot_training.ui.plugin.SpotTrainingPlugin"}],
        "config": {
            "spot_training": {
                "description": "Defaults for spot-training operators.",
                "options": {
                    "checkpoint_base_uri": {
                        "description": "Base URI under which a task's default checkpoint prefix is created "
                        "as <base>/<dag_id>/<run_id>/<task_id>[/<map_index>]. Any fsspec URL "
                        "(s3://bucket/path, gs://bucket/path) or a local path shared by workers and training.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://my-bucket/spot-training",
                        "default": "{AIRFLOW_HOME}/spot_training/checkpoints",
                    },
                    "local_state_dir": {
                        "description": "Where the local backend keeps attempt directories (status, logs).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": None,
                        "default": "{AIRFLOW_HOME}/spot_training/local",
                    },
                    "poll_interval": {
                        "description": "Default seconds between two status polls of a running attempt.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": None,
                        "default": "30",
                    },
                    "progress_log_interval": {
                        "description": "Seconds between two progress lines in the triggerer log.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": None,
                        "default": "60",
                    },
                    "pool_cooldown": {
                        "description": "Pool health, for backends with a ladder of pools (EC2 instance types x "
                        "subnets, Compute Engine zones): seconds a pool is tried last after it reclaimed an attempt "
                        "or had no spot capacity; spot launches otherwise try pools longest-uptime first (on-demand "
                        "launches keep the configured order). Observations are shared "
                        "by every task of the deployment through Airflow Variables "
                        "(spot_training_pool_health:*). 0 turns pool health off (the configured order). A task's "
                        "pool_cooldown= overrides it.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": "3600",
                        "default": "1800",
                    },
                    "pool_health_window": {
                        "description": "Seconds of pool observations that count for pool health; older ones are "
                        "forgotten. A pool with no reclaim or capacity miss in the window has the longest uptime.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": None,
                        "default": "21600",
                    },
                    "default_deferrable": {
                        "description": "Whether spot-training tasks wait in the triggerer (no worker slot) unless "
                        "a task sets deferrable= itself. Turn it off for a deployment without a triggerer.",
                        "version_added": "0.2.0",
                        "type": "boolean",
                        "example": "false",
                        "default": "True",
                    },
                    "deployment_id": {
                        "description": "Identifies this Airflow deployment: salts run keys and attempt tokens and "
                        "is the value of the spot-training:deployment tag / spot-training-deployment label on every "
                        "instance, VM and job, so that two deployments sharing a cloud account never re-attach to "
                        "or stop each other's attempts. Set it explicitly (e.g. the output of "
                        "python -c 'import secrets; print(secrets.token_hex(6))') and use the same value in the "
                        "IAM policy's conditions. When unset, one is generated on first use and kept in the "
                        "Airflow Variable spot_training_deployment_id.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "3f9c2a71b0de",
                        "default": "",
                    },
                },
            }
        },
    }
