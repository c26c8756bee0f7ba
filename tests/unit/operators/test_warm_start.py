"""Warm start (``init_from=``) and what a succeeded run names: its model, its final checkpoint, its asset event.

Real local attempts of ``examples/retrain.py`` through the real operator and trigger; only the
task runner is stood in for (``harness.TaskRun``), with Airflow's own outlet-event accessors.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from airflow_spot_training.backends.local import LocalBackend
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError, SpotTrainingOperator
from airflow_spot_training.runtime.checkpoint import CheckpointError, CheckpointManager, read_checkpoint
from tests.unit.operators.harness import TI, TaskRun

MODEL = Asset(name="weekly_model", uri="s3://models/weekly")


def retrain(tmp_path: Path, run_id: str, steps: int = 12, **kwargs) -> SpotTrainingOperator:
    backend = LocalBackend(
        command=[sys.executable, "-m", "airflow_spot_training.examples.retrain", "--steps", str(steps),
                 "--checkpoint-every", "4", "--data-start", run_id],
        state_dir=str(tmp_path / "state"), notice_seconds=0.5)
    return SpotTrainingOperator(task_id="train", backend=backend, checkpoint_prefix=str(tmp_path / run_id),
                                poll_interval=0.05, **kwargs)


def starts(tmp_path: Path, run_id: str) -> list[tuple[int, str]]:
    """(step, source) of every start of the run's attempts, from the trainings' own output, in attempt order."""
    found = []
    for log in (tmp_path / "state").rglob("*.log"):
        for match in re.finditer(r"attempt (\d+) on \w+: starting at step (\d+) \(([^)]*)\) data (\S+)\.\.",
                                 log.read_text()):
            if match.group(4) == run_id:
                found.append((int(match.group(1)), int(match.group(2)), match.group(3)))
    return [(step, source) for _, step, source in sorted(found)]


def first_run(tmp_path: Path) -> dict:
    run = TaskRun(ti=TI(run_id="week1"))
    summary = run.run(retrain(tmp_path, "week1", outlets=[MODEL]))
    assert summary["outcome"] == "succeeded"
    return summary


class TestWhatASucceededRunNames:
    def test_final_checkpoint_and_model_uri_in_the_return_value_and_the_asset_event(self, tmp_path):
        run = TaskRun(ti=TI(run_id="week1"))
        summary = run.run(retrain(tmp_path, "week1", outlets=[MODEL]))
        final = CheckpointManager(str(tmp_path / "week1")).latest()
        assert final.step == 12 and final.record.reason == "final"
        assert summary["final_checkpoint_uri"] == summary["model_uri"] == final.uri
        extra = run.context()["outlet_events"][MODEL].extra
        assert extra["model_uri"] == extra["checkpoint_uri"] == final.uri
        assert extra["final_step"] == 12 and extra["preemptions"] == 0
        assert extra["metrics"]["data_start"] == "week1" and "final_loss" in extra["metrics"]
        assert set(extra) >= {"cost", "savings", "run_key"}
        json.dumps(extra)  # an asset event's extra must be JSON


class TestWarmStart:
    def test_last_success_starts_from_the_previous_runs_final_checkpoint_and_writes_its_own(self, tmp_path):
        previous = first_run(tmp_path)
        run = TaskRun(ti=TI(run_id="week2", earlier_returns=[previous]))
        summary = run.run(retrain(tmp_path, "week2", init_from="last_success"))
        assert summary["init_uri"] == previous["final_checkpoint_uri"] and summary["init_step"] == 12
        assert starts(tmp_path, "week2") == [(12, f"warm start from {previous['final_checkpoint_uri']}")]
        own = CheckpointManager(str(tmp_path / "week2")).latest()
        assert own.step == 24 and summary["final_checkpoint_uri"] == own.uri
        assert CheckpointManager(str(tmp_path / "week1")).latest().step == 12  # the source is left alone

    def test_once_the_run_has_its_own_checkpoint_it_resumes_from_that_not_the_warm_start(self, tmp_path):
        first_run(tmp_path)
        # what an earlier attempt of this run left before it was reclaimed: its own step 16 (of 24)
        state = {"step": 16, "weight": 2.9, "loss": 0.01, "last_step": 24}
        CheckpointManager(str(tmp_path / "week2")).save(16, {"state.json": json.dumps(state).encode()},
                                                        total_steps=24, reason="interruption")
        summary = TaskRun(ti=TI(run_id="week2")).run(retrain(tmp_path, "week2", init_from=str(tmp_path / "week1")))
        assert summary["init_step"] == 12  # handed to the attempt, and not used: the run has its own checkpoint
        assert starts(tmp_path, "week2") == [(16, "own checkpoint")]
        assert CheckpointManager(str(tmp_path / "week2")).latest().step == 24

    def test_an_asset_names_the_checkpoint_of_its_newest_event(self, tmp_path):
        previous = first_run(tmp_path)

        class Event:  # what Airflow's inlet-events accessor yields: events with an extra
            def __init__(self, extra):
                self.extra = extra

        op = retrain(tmp_path, "week2", init_from=MODEL)
        assert MODEL in op.inlets  # so that Airflow hands the task its events
        run = TaskRun(ti=TI(run_id="week2"))
        run.extra_context["inlet_events"] = {MODEL: [Event({"checkpoint_uri": "/nowhere/step-000000000001"}),
                                                     Event({"checkpoint_uri": previous["final_checkpoint_uri"]})]}
        assert run.run(op)["init_step"] == 12

    def test_a_step_directory_is_taken_as_is(self, tmp_path):
        first_run(tmp_path)
        older = CheckpointManager(str(tmp_path / "week1"), keep_last=None).committed()[0]
        summary = TaskRun(ti=TI(run_id="week2")).run(retrain(tmp_path, "week2", init_from=older.uri))
        assert summary["init_uri"] == older.uri and summary["init_step"] == older.step

    @pytest.mark.parametrize("init_from", ["last_success", "{prefix}/empty", "{prefix}/week1/step-000000000099"])
    def test_missing_fails_before_launching_naming_it(self, tmp_path, init_from):
        init_from = init_from.format(prefix=tmp_path)
        if "week1" in init_from:
            first_run(tmp_path)
        run = TaskRun(ti=TI(run_id="week2"))
        with pytest.raises(AirflowFailException, match="init_from=.*Nothing was launched"):
            run.run(retrain(tmp_path, "week2", init_from=init_from))
        assert not (tmp_path / "week2").exists() or not CheckpointManager(str(tmp_path / "week2")).committed()
        assert not (run.store.get("spot_training_ledger") or {}).get("attempts")

    def test_missing_falls_back_to_scratch_when_asked(self, tmp_path):
        run = TaskRun(ti=TI(run_id="week1"))
        summary = run.run(retrain(tmp_path, "week1", init_from="last_success", init_from_missing="scratch"))
        assert summary["init_uri"] is None and starts(tmp_path, "week1") == [(0, "scratch")]

    def test_a_retry_keeps_the_warm_start_of_the_first_try(self, tmp_path):
        previous = first_run(tmp_path)
        run = TaskRun(ti=TI(run_id="week2", earlier_returns=[previous]))
        op = retrain(tmp_path, "week2", init_from="last_success")
        op._open_ledger(run.context())  # the first try opened the ledger, then the worker died
        run.ti.earlier_returns.append({"final_checkpoint_uri": "/elsewhere/step-000000000005"})
        run.new_try()
        assert run.run(op)["init_uri"] == previous["final_checkpoint_uri"]

    def test_a_commit_record_gone_is_refused(self, tmp_path):
        previous = first_run(tmp_path)
        Path(previous["final_checkpoint_uri"], "COMMIT.json").unlink()
        with pytest.raises(CheckpointError, match="no valid commit record"):
            read_checkpoint(previous["final_checkpoint_uri"])
        run = TaskRun(ti=TI(run_id="week2"))
        with pytest.raises(AirflowFailException, match="no valid commit record"):
            run.run(retrain(tmp_path, "week2", init_from=previous["final_checkpoint_uri"]))


class TestArguments:
    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"init_from": 3}, "init_from=3 is invalid: give a checkpoint prefix"),
        ({"init_from": "relative/path"}, "init_from: 'relative/path' is a relative path"),
        ({"init_from": "last_success", "init_from_missing": "ignore"}, "init_from_missing='ignore' is invalid"),
    ])
    def test_bad_arguments_fail_at_parse_time(self, tmp_path, kwargs, message):
        with pytest.raises(SpotTrainingConfigError, match=re.escape(message)):
            retrain(tmp_path, "week1", **kwargs)

    def test_a_templated_prefix_is_checked_once_rendered(self, tmp_path):
        op = retrain(tmp_path, "week2", init_from="{{ params.previous }}")
        op.render_template_fields({"params": {"previous": "relative/path"}})
        with pytest.raises(AirflowFailException, match="relative path"):
            op._validate_rendered()


class TestRuntime:
    def test_resume_point_prefers_the_runs_own_checkpoint(self, tmp_path):
        source = CheckpointManager(str(tmp_path / "old"))
        source.save(7, {"state.json": b"{}"}, reason="final")
        warm = source.latest().uri
        manager = CheckpointManager(str(tmp_path / "new"), init_uri=warm)
        point = manager.resume_point()
        assert point.warm_start and point.step == 7 and manager.open_file(point, "state.json").read() == b"{}"
        manager.save(9, {"state.json": b"[]"})
        assert manager.resume_point().step == 9 and not manager.resume_point().warm_start
        assert manager.latest().step == 9  # latest() never returns the warm start

    def test_the_contract_names_the_warm_start_for_every_backend(self, monkeypatch, tmp_path):
        monkeypatch.setenv("SPOT_TRAINING_INIT_URI", str(tmp_path / "old" / "step-000000000007"))
        assert CheckpointManager(str(tmp_path / "new")).init_uri.endswith("step-000000000007")


class TestLineage:
    def test_datasets_follow_openlineage_naming(self):
        pytest.importorskip("airflow.providers.openlineage")
        from airflow_spot_training.backends.sagemaker import SageMakerSpotBackend
        from airflow_spot_training.operators.lineage import operator_lineage

        backend = SageMakerSpotBackend(
            image_uri="1.dkr.ecr.us-east-1.amazonaws.com/t:1", role_arn="arn:aws:iam::1:role/r",
            instance_type="ml.m5.large",
            input_data_config=[{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://data/w1/"}}}])
        summary = {"model_uri": "s3://out/job/output/model.tar.gz", "init_uri": "s3://ck/week1/step-000000000040"}
        lineage = operator_lineage(summary, backend.input_uris(), [], [MODEL])
        assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://data", "w1"),
                                                                   ("s3://ck", "week1/step-000000000040")]
        assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://out", "job/output/model.tar.gz"),
                                                                    ("s3://models", "weekly")]

    def test_the_backend_names_the_model_when_it_has_a_place_for_it(self, tmp_path):
        from airflow_spot_training.backends.vertex_ai import VertexAISpotBackend
        from airflow_spot_training.core.ledger import AttemptRecord, RunLedger
        from airflow_spot_training.operators.model_asset import model_locations

        vertex = VertexAISpotBackend(region="us-central1", machine_type="n1-standard-4", image_uri="img")
        assert vertex.model_uri("gs://b/runs/r/train/checkpoints") == "gs://b/runs/r/train/model"
        ledger = RunLedger(run_key="k", checkpoint_prefix=str(tmp_path / "ck"))
        ledger.attempts.append(AttemptRecord(number=1, capacity="spot", token="k-a1", try_number=1,
                                             model_uri="s3://out/model.tar.gz"))  # what SageMaker reported
        CheckpointManager(str(tmp_path / "ck")).save(5, {"w": b"1"}, reason="final")
        locations = model_locations(ledger, LocalBackend(command=["true"]))
        assert locations["model_uri"] == "s3://out/model.tar.gz"
        assert locations["final_checkpoint_uri"].endswith("step-000000000005")
