"""The example retraining pipeline (dags/spot_training_weekly_retraining.py) through real Airflow 3.3.

Two consecutive weeks of the weekly DAG run with `airflow dags test` on SQLite. The second week's
first attempt starts from the first week's final checkpoint (the training's own log says which step),
its rendered command holds its own data window, and after each week one scheduler loop
(`airflow scheduler -n 1`) triggers the asset-scheduled evaluate/deploy DAG once, on the event whose
extra names that week's model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import AIRFLOW, ROOT, LocalAirflow

pytestmark = pytest.mark.e2e

WEEKLY = "spot_training_weekly_retraining"
DEPLOY = "spot_training_evaluate_and_deploy"
#: a DAG that warm-starts from the model asset itself (init_from=Asset): its newest event's checkpoint
FINETUNE = textwrap.dedent(
    """
    import sys

    import pendulum
    from airflow.sdk import DAG, Asset

    from airflow_spot_training.backends.local import LocalBackend
    from airflow_spot_training.operators.spot_training import SpotTrainingOperator

    with DAG("finetune_from_the_asset", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             tags=["e2e"]):
        SpotTrainingOperator(
            task_id="train",
            backend=LocalBackend(command=[sys.executable, "-m", "airflow_spot_training.examples.retrain",
                                          "--steps", "4", "--data-start", "finetune"]),
            init_from=Asset("weekly_regression_model"),
            poll_interval=0.2,
        )
    """
)
WEEKS = [("2026-01-11T00:00:00+00:00", "2026-01-04", "2026-01-11"),
         ("2026-01-18T00:00:00+00:00", "2026-01-11", "2026-01-18")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> LocalAirflow:
    home = tmp_path_factory.mktemp("airflow-home-retraining")
    workdir = tmp_path_factory.mktemp("e2e-retraining")
    dags = workdir / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "dags" / f"{WEEKLY}.py", dags)  # the example, as shipped
    (dags / "finetune_from_the_asset.py").write_text(FINETUNE)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI": str(workdir / "checkpoints"),
        "AIRFLOW__SPOT_TRAINING__LOCAL_STATE_DIR": str(workdir / "state"),
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                     else [])),
    }
    for command in (["db", "migrate"], ["dags", "reserialize"], ["dags", "unpause", DEPLOY]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True, timeout=300)
    return LocalAirflow(home=home, workdir=workdir, env=env)


def _run_scheduler_once(pipeline: LocalAirflow) -> None:
    """One scheduler loop: it turns the queued asset event into a run of the asset-scheduled DAG."""
    with open(pipeline.workdir / "scheduler.log", "a") as log:
        subprocess.run([AIRFLOW, "scheduler", "-n", "1"], env=pipeline.env, stdout=log, stderr=subprocess.STDOUT,
                       check=True, timeout=300)


def _returns(pipeline: LocalAirflow) -> list[dict]:
    rows = pipeline.query(
        "from airflow.models.xcom import XComModel\nfrom airflow.models.dagrun import DagRun\n"
        "with create_session() as s:\n"
        "    rows = s.execute(select(XComModel.value).join(DagRun, DagRun.id == XComModel.dag_run_id)"
        f".where(XComModel.dag_id == {WEEKLY!r}, XComModel.task_id == 'train', XComModel.key == 'return_value')"
        ".order_by(DagRun.logical_date)).all()\n"
        "result = [r[0] for r in rows]\n"
    )
    return [json.loads(value) if isinstance(value, str) else value for value in rows]


def _rendered_commands(pipeline: LocalAirflow) -> list[list[str]]:
    rows = pipeline.query(
        "from airflow.models.renderedtifields import RenderedTaskInstanceFields as R\n"
        "from airflow.models.dagrun import DagRun\n"
        "with create_session() as s:\n"
        "    rows = s.execute(select(R.rendered_fields).join(DagRun, (DagRun.run_id == R.run_id) & "
        f"(DagRun.dag_id == R.dag_id)).where(R.dag_id == {WEEKLY!r}).order_by(DagRun.logical_date)).all()\n"
        "result = [r[0] for r in rows]\n"
    )
    return [(json.loads(r) if isinstance(r, str) else r)["backend"][1]["command"] for r in rows]


def _deploy_runs(pipeline: LocalAirflow) -> list[dict]:
    return pipeline.query(
        "from airflow.models.dagrun import DagRun\nfrom airflow.models.asset import AssetEvent\n"
        "from sqlalchemy.orm import configure_mappers, selectinload\nconfigure_mappers()\n"
        "with create_session() as s:\n"
        f"    runs = s.scalars(select(DagRun).where(DagRun.dag_id == {DEPLOY!r}).order_by(DagRun.id)"
        ".options(selectinload(DagRun.consumed_asset_events))).all()\n"
        "    result = [{'run_id': r.run_id, 'run_type': str(r.run_type), 'events': [{'source_run_id': e.source_run_id, "
        "'extra': e.extra} for e in r.consumed_asset_events]} for r in runs]\n"
    )


def _starts(pipeline: LocalAirflow, run_key: str) -> list[tuple[int, str]]:
    """(step, source) each attempt of one weekly run printed when it started, in attempt order."""
    found = []
    for log in sorted((pipeline.workdir / "state" / run_key).glob("attempt-*/training.log")):
        match = re.search(r"starting at step (\d+) \(([^)]*)\)", log.read_text())
        assert match, f"{log} has no start line"
        found.append((int(log.parent.name.split("-")[1]), int(match.group(1)), match.group(2)))
    return [(step, source) for _, step, source in sorted(found)]


def test_two_weeks_warm_start_their_own_data_window_and_trigger_the_deploy_dag_once_each(pipeline):
    for logical_date, _, _ in WEEKS:
        pipeline.dags_test(WEEKLY, logical_date)
        _run_scheduler_once(pipeline)

    first, second = _returns(pipeline)
    assert first["outcome"] == second["outcome"] == "succeeded"
    # week 1 had nothing to start from; week 2's first attempt started from week 1's final checkpoint
    assert first["init_uri"] is None and _starts(pipeline, first["run_key"])[0] == (0, "scratch")
    assert first["final_checkpoint_step"] == 40 and first["final_checkpoint_uri"].endswith("step-000000000040")
    assert second["init_uri"] == first["final_checkpoint_uri"] and second["init_step"] == 40
    assert _starts(pipeline, second["run_key"])[0] == (40, f"warm start from {first['final_checkpoint_uri']}")
    # ... and wrote its own checkpoints under its own prefix, 40 steps further
    assert second["checkpoint_prefix"] != first["checkpoint_prefix"]
    assert second["final_checkpoint_uri"].startswith(second["checkpoint_prefix"] + "/")
    assert second["final_checkpoint_step"] == 80
    assert Path(first["final_checkpoint_uri"], "COMMIT.json").exists()  # week 1's model is left as it was

    # each week's rendered command (Rendered Template) holds its own data window
    for command, (_, start, end) in zip(_rendered_commands(pipeline), WEEKS, strict=True):
        assert command[command.index("--data-start") + 1] == start and command[command.index("--data-end") + 1] == end
    assert second["metrics"]["data_start"] == "2026-01-11"  # and the training saw it

    # the asset-scheduled DAG ran once per successful week, on the event naming that week's model
    runs = _deploy_runs(pipeline)
    assert [run["run_type"] for run in runs] == ["asset_triggered", "asset_triggered"]
    for run, summary in zip(runs, (first, second), strict=True):
        assert len(run["events"]) == 1
        extra = run["events"][0]["extra"]
        assert extra["model_uri"] == summary["model_uri"] == summary["final_checkpoint_uri"]
        assert extra["final_step"] == summary["final_checkpoint_step"]
        assert extra["metrics"]["final_loss"] == summary["metrics"]["final_loss"]
        assert extra["preemptions"] == summary["preemptions"] and extra["cost"] == summary["cost"]
        # its evaluate task reads that event (triggering_asset_events) and passes the model on
        evaluated = subprocess.run([AIRFLOW, "tasks", "test", DEPLOY, "evaluate", run["run_id"]], env=pipeline.env,
                                   capture_output=True, text=True, timeout=300, check=True)
        assert f"Returned value was: {{'model_uri': '{summary['model_uri']}'" in evaluated.stdout + evaluated.stderr


def test_a_dag_can_warm_start_from_the_model_asset(pipeline):
    """init_from=Asset: the checkpoint of the asset's newest event (this runs after the two weeks)."""
    if not _returns(pipeline):  # run on its own
        pipeline.dags_test(WEEKLY, WEEKS[0][0])
    newest = _returns(pipeline)[-1]
    pipeline.dags_test("finetune_from_the_asset", "2026-02-01T00:00:00+00:00")
    summary = pipeline.xcom("finetune_from_the_asset", "return_value")
    assert summary["init_uri"] == newest["final_checkpoint_uri"] and summary["init_step"] == newest["final_checkpoint_step"]
    assert _starts(pipeline, summary["run_key"]) == [(newest["final_checkpoint_step"], f"warm start from {newest['final_checkpoint_uri']}")]
