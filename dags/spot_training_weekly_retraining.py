"""Scheduled retraining: a weekly training on spot, warm-started from last week's model, and a DAG that
evaluates and deploys each new model as soon as its asset event arrives.

``spot_training_weekly_retraining`` runs every week on that week's data window (templated into the
command), starts from the final checkpoint of the last successful week (``init_from="last_success"``;
the very first week starts from scratch), trains on spot with a deadline, and on success emits an
event for the ``weekly_regression_model`` asset whose extra names the model, its final step, metrics,
preemptions, cost and savings. ``spot_training_evaluate_and_deploy`` is scheduled on that asset: it
reads the event, checks the model's metrics and records the deployed model.

The training is ``airflow_spot_training.examples.retrain`` on the local backend (no cloud account
needed); spot attempt 1 of every week is reclaimed once it has committed step 20 of its 40.
"""

from __future__ import annotations

import json
import posixpath
import sys

import pendulum
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, task

# [START howto_scheduled_retraining]
from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.operators.spot_training import SpotTrainingOperator

MODEL = Asset("weekly_regression_model")

with DAG(
    dag_id="spot_training_weekly_retraining",
    schedule=CronDataIntervalTimetable("@weekly", timezone="UTC"),  # each run covers the week before it
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # each week starts from the previous week's model
    tags=["spot-training", "example", "retraining"],
) as retraining:
    SpotTrainingOperator(
        task_id="train",
        backend=LocalBackend(
            command=[
                sys.executable, "-m", "airflow_spot_training.examples.retrain",
                "--steps", "40", "--checkpoint-every", "10", "--step-seconds", "0.05",
                "--data-start", "{{ data_interval_start | ds }}", "--data-end", "{{ data_interval_end | ds }}",
            ],
            preemptions=step_preemptions([20]),
            notice_seconds=2,
            spot_price_per_hour=1.02,
            on_demand_price_per_hour=3.06,
        ),
        init_from="last_success",  # last week's final checkpoint
        init_from_missing="scratch",  # the first week has none
        deadline="30m",
        max_preemptions=2,
        outlets=[MODEL],  # the event's extra names the model: model_uri, final_step, metrics, cost, ...
        poll_interval=1,
        retries=1,
    )
# [END howto_scheduled_retraining]

# [START howto_deploy_on_new_model]
with DAG(
    dag_id="spot_training_evaluate_and_deploy",
    schedule=[MODEL],  # one run per new model
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    tags=["spot-training", "example", "retraining"],
) as deployment:

    @task(inlets=[MODEL])
    def evaluate(*, triggering_asset_events=None) -> dict:
        """The newest model's event: refuse a model whose loss is not finite and small."""
        event = triggering_asset_events[MODEL][-1]
        loss = event.extra["metrics"]["final_loss"]
        if not loss < 1.0:
            raise ValueError(f"model {event.extra['model_uri']} has final_loss={loss}; not deploying it")
        return {"model_uri": event.extra["model_uri"], "final_step": event.extra["final_step"], "final_loss": loss}

    @task
    def deploy(model: dict) -> str:
        """Record the model as the one in service (a real deployment would update an endpoint)."""
        import fsspec

        from airflow_spot_training import settings

        record = posixpath.join(settings.checkpoint_base_uri(), "deployed", f"{MODEL.name}.json")
        with fsspec.open(record, "w", auto_mkdir=True) as f:
            f.write(json.dumps(model))
        return model["model_uri"]

    deploy(evaluate())
# [END howto_deploy_on_new_model]
