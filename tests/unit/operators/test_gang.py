"""Multi-node (gang) attempts through the operator: parse-time checks, node-seconds, exact resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from airflow_spot_training.backends.local import LocalBackend, step_preemptions
from airflow_spot_training.backends.sagemaker import SageMakerSpotBackend
from airflow_spot_training.operators.spot_training import SpotTrainingConfigError, SpotTrainingOperator
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests.unit.operators.harness import TaskRun

TRAINING = ["-m", "airflow_spot_training.examples.ddp_regression", "--steps", "90", "--checkpoint-every", "10",
            "--hidden", "16", "--step-delay", "0.02"]


def _gang_run(tmp_path: Path, name: str, preemptions=None) -> tuple[dict, dict[str, torch.Tensor]]:
    params = tmp_path / f"{name}.pt"
    backend = LocalBackend(command=[sys.executable, *TRAINING, "--save-final-params", str(params)],
                           state_dir=str(tmp_path / f"state-{name}"), preemptions=preemptions,
                           notice_seconds=20, spot_price_per_hour=1.0)
    operator = SpotTrainingOperator(task_id="train", backend=backend, checkpoint_prefix=str(tmp_path / f"ck-{name}"),
                                    num_nodes=2, poll_interval=0.1, max_preemptions=5)
    summary = TaskRun().run(operator)
    return summary, torch.load(params)


class TestGangArguments:
    @pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
    def test_num_nodes_must_be_a_whole_number_of_machines(self, value):
        with pytest.raises(SpotTrainingConfigError, match=r"num_nodes=.* is invalid: give an integer >= 1"):
            SpotTrainingOperator(task_id="t", backend=LocalBackend(command=["true"]), num_nodes=value)

    def test_a_backend_that_cannot_gang_is_refused_naming_those_that_can(self):
        class SingleMachineBackend(LocalBackend):  # declared the way a backend without gangs is
            supports_gangs = False

        with pytest.raises(SpotTrainingConfigError) as error:
            SpotTrainingOperator(task_id="t", backend=SingleMachineBackend(command=["true"]), num_nodes=2)
        assert str(error.value) == (
            "t: num_nodes=2: SingleMachineBackend cannot launch several machines as one gang. Use num_nodes=1, "
            "or a backend that can (compute_engine, ec2, local, sagemaker, vertex_ai).")

    def test_a_node_count_said_twice_is_refused(self):
        backend = SageMakerSpotBackend(image_uri="1.dkr.ecr.us-east-1.amazonaws.com/t:1", instance_count=2,
                                       role_arn="arn:aws:iam::1:role/r", instance_type="ml.m5.large")
        with pytest.raises(SpotTrainingConfigError, match="num_nodes=2: SageMakerSpotBackend: instance_count=2"):
            SpotTrainingOperator(task_id="t", backend=backend, checkpoint_prefix="s3://b/p", num_nodes=2)


class TestGangExactResume:
    def test_two_node_gang_preempted_twice_ends_bit_identical(self, tmp_path):
        straight, expected = _gang_run(tmp_path, "straight")
        assert straight["outcome"] == "succeeded" and straight["preemptions"] == 0
        only = straight["attempts"][0]  # billed per node: price x nodes x seconds
        assert only["node_seconds"] == pytest.approx(2 * only["seconds"], abs=0.01)
        assert only["cost"] == pytest.approx(only["node_seconds"] / 3600.0, rel=1e-3)

        # attempt 1: node 0 reclaimed with a notice (every rank agrees to stop and writes its shard);
        # attempt 2: node 1 reclaimed with no notice at all (the survivor's shard alone commits nothing)
        schedule = step_preemptions([30, 60], notice_seconds=[20, 0])
        summary, params = _gang_run(tmp_path, "preempted", schedule)

        assert summary["outcome"] == "succeeded"
        assert summary["preemptions"] == 2  # one node reclaimed = one preemption of the attempt
        a1, a2, a3 = summary["attempts"]
        assert [a["outcome"] for a in (a1, a2, a3)] == ["preempted", "preempted", "succeeded"]
        assert [a["nodes"] for a in (a1, a2, a3)] == [2, 2, 2]
        assert a2["start_step"] >= 30 and a3["start_step"] >= 60  # each resumed from a step both ranks committed
        assert params.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(params[name], value), name
        final = CheckpointManager(str(tmp_path / "ck-preempted")).latest()
        assert final.record.num_shards == 2 and final.step == 90
