"""SageMakerSpotBackend pieces that need no cloud: validation, job parameters, status mapping."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from airflow_spot_training.backends.base import BackendConfigError, LaunchRequest, SpotBackend
from airflow_spot_training.backends.sagemaker import SageMakerHandle, SageMakerSpotBackend, classify_training_job
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.core.policy import Capacity

BASE = dict(image_uri="1.dkr.ecr.us-east-1.amazonaws.com/t:1", role_arn="arn:aws:iam::1:role/r",
            instance_type="ml.g5.xlarge", max_runtime=3600)


def backend(**kwargs):
    return SageMakerSpotBackend(**{**BASE, **kwargs})


def job_handle(**fields) -> SageMakerHandle:
    return SageMakerHandle(**{"backend": "sagemaker", "token": "t-a1", "attempt": 1, "capacity": "spot",
                              "job_name": "j", **fields})


def request(capacity=Capacity.SPOT, attempt=1):
    contract = Contract("s3://b/ckpt/", attempt, capacity.value, 2, "0123456789abcdef0123", "")
    return LaunchRequest(contract, capacity, f"0123456789abcdef0123-a{attempt}", {"task_id": "train"})


class TestConfig:
    @pytest.mark.parametrize("kwargs, fragment", [
        ({"image_uri": None}, "needs image_uri="),
        ({"role_arn": "MyRole"}, "role_arn='MyRole' is invalid: it must be an IAM role ARN"),
        ({"instance_type": "g5.xlarge"}, "start with 'ml.'"),
        ({"max_wait": 100}, "max_wait=100 must be >= max_runtime=3600"),
        ({"instance_count": 0}, "instance_count=0 is invalid (Input should be greater than 0)"),
        ({"job_name_prefix": "x" * 40}, "job_name_prefix="),
        ({"job_name_prefix": "bad_name"}, "job_name_prefix="),
        ({"hyperparameters": {"epochs": 3}}, "hyperparameters['epochs']=3 is invalid (Input should be a valid string)"),
        ({"output_s3_uri": "/tmp/out"}, "must be an s3:// URI"),
    ])
    def test_invalid_arguments_fail_naming_the_argument(self, kwargs, fragment):
        with pytest.raises(BackendConfigError) as raised:
            backend(**kwargs)
        assert fragment in str(raised.value)

    def test_serialize_round_trip(self):
        classpath, kwargs = backend(hyperparameters={"a": "1"}, tags={"t": "v"}).serialize()
        assert SpotBackend.deserialize(classpath, json.loads(json.dumps(kwargs))).serialize() == (classpath, kwargs)

    def test_max_wait_defaults_to_twice_max_runtime(self):
        assert backend().max_wait == 7200


class TestCreateParams:
    def test_spot_job(self):
        params = backend().create_params(request())
        assert params["TrainingJobName"] == "spot-training-0123456789abcdef0123-a1"
        assert len(params["TrainingJobName"]) <= 63
        assert params["EnableManagedSpotTraining"] is True
        assert params["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
        assert params["CheckpointConfig"] == {"S3Uri": "s3://b/ckpt", "LocalPath": "/opt/ml/checkpoints"}
        env = params["Environment"]
        assert env["SPOT_TRAINING_CHECKPOINT_URI"] == "/opt/ml/checkpoints"
        assert env["SPOT_TRAINING_CHECKPOINT_S3_URI"] == "s3://b/ckpt"
        assert env["SPOT_TRAINING_ATTEMPT"] == "1" and env["SPOT_TRAINING_PREEMPTIONS"] == "2"
        assert params["OutputDataConfig"] == {"S3OutputPath": "s3://b/ckpt/_output"}

    def test_on_demand_job_resumes_from_the_same_s3_uri(self):
        spot = backend().create_params(request())
        on_demand = backend().create_params(request(Capacity.ON_DEMAND, 2))
        assert on_demand["EnableManagedSpotTraining"] is False
        assert "MaxWaitTimeInSeconds" not in on_demand["StoppingCondition"]
        assert on_demand["CheckpointConfig"] == spot["CheckpointConfig"]
        assert on_demand["TrainingJobName"].endswith("-a2")


def job(status, secondary, transitions=(), **extra):
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return {"TrainingJobStatus": status, "SecondaryStatus": secondary, "TrainingStartTime": now,
            "SecondaryStatusTransitions": [{"Status": s, "StartTime": now, "StatusMessage": "free text"}
                                           for s in transitions], **extra}


class TestClassifyTrainingJob:
    @pytest.mark.parametrize("status, secondary, expected", [
        ("InProgress", "Starting", "pending"),
        ("InProgress", "Training", "running"),
        ("Stopping", "Stopping", "running"),
        ("Completed", "Completed", "succeeded"),
        ("Stopped", "MaxWaitTimeExceeded", "capacity_unavailable"),
        ("Failed", "MaxWaitTimeExceeded", "capacity_unavailable"),
        ("Stopped", "Stopped", "stopped"),
        ("Failed", "Failed", "failed"),
        ("Stopped", "MaxRuntimeExceeded", "stopped"),
    ])
    def test_status_mapping(self, status, secondary, expected):
        assert classify_training_job(job(status, secondary), job_handle()).state == expected

    def test_preemptions_are_interrupted_transitions(self):
        status = classify_training_job(
            job("InProgress", "Training", ["Starting", "Training", "Interrupted", "Training", "Interrupted",
                                           "Training"]), job_handle())
        assert status.state == "running" and status.preemptions == 2

    def test_billable_against_training_seconds_times_instance_count(self):
        status = classify_training_job(
            job("Completed", "Completed", TrainingTimeInSeconds=1000, BillableTimeInSeconds=250),
            job_handle(instance_count=2))
        assert status.details["training_seconds"] == 2000 and status.details["billable_seconds"] == 500
        assert status.details["measured_savings"] == 0.75

    def test_failure_reason_is_kept(self):
        status = classify_training_job(job("Failed", "Failed", FailureReason="AlgorithmError: boom"), job_handle())
        assert status.reason == "AlgorithmError: boom"
