"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    from airflow_spot_training import __version__

    return {
        "package-name": "airflow-spot-training",
        "name": "Spot Training",
        "description": "Train on spot / preemptible capacity: survive preemptions, escalate to on-demand, "
        "resume from checkpoints, finish by a deadline.",
        "versions": [__version__],
        "extra-links": [
            "airflow_spot_training.links.spot_training.CheckpointLink",
            "airflow_spot_training.links.aws.EC2InstanceLink",
            "airflow_spot_training.links.aws.SageMakerTrainingJobLink",
            "airflow_spot_training.links.google_cloud.ComputeEngineInstanceLink",
            "airflow_spot_training.links.google_cloud.VertexAICustomJobLink",
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
                },
            }
        },
    }
