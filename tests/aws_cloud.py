"""A loopback AWS for the tests: moto's server in this process, and the reclaims moto cannot do.

moto's ``ThreadedMotoServer`` serves the EC2, S3 and SageMaker APIs on a free
127.0.0.1 port chosen at runtime; the code under test talks to it with real boto3,
aiobotocore and s3fs clients through the standard ``aws_default`` Airflow
connection (``AIRFLOW_CONN_AWS_DEFAULT`` with an ``endpoint_url`` extra).

moto never reclaims a spot instance or runs a training job, so the test plays the
cloud's part by editing moto's backend state, which is reachable because the
server runs in the test process:

* **EC2 reclaim**: the instance's ``_state`` becomes ``terminated`` and its
  ``state_reason`` ``Server.SpotInstanceTermination`` - what EC2 shows after it
  takes a spot instance back.
* **EC2 training finishes**: the test plays the machine: it commits checkpoints and
  writes the result record to moto's S3 with ``CheckpointManager`` / s3fs, then sets
  the instance to ``terminated`` with ``Client.InstanceInitiatedShutdown`` - what the
  bootstrap's ``shutdown -h now`` with shutdown behaviour ``terminate`` produces.
* **EC2 capacity, quota and throttling errors**: ``FaultPlan`` wraps moto's
  ``run_instances`` / ``describe_instances`` so that chosen calls raise the EC2 error
  (``InsufficientInstanceCapacity`` for chosen pools, ``MaxSpotInstanceCountExceeded``,
  ``RequestLimitExceeded`` for the first N calls); the clients receive the same HTTP
  error responses EC2 sends.
* **SageMaker**: moto creates training jobs already ``Completed``; ``SageMakerCloud``
  makes new jobs start ``InProgress``, appends ``Interrupted`` entries to
  ``SecondaryStatusTransitions`` for a reclaim, completes them with
  ``BillableTimeInSeconds`` / ``TrainingTimeInSeconds``, and adds the
  ``StopTrainingJob`` call moto lacks.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = "spot-ckpt"


def start_server() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def connection_env(endpoint: str) -> dict[str, str]:
    extra = {"endpoint_url": endpoint, "region_name": REGION}
    return {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": extra}),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def ec2_backend() -> Any:
    from moto.backends import get_backend

    return get_backend("ec2")[ACCOUNT][REGION]


def sagemaker_backend() -> Any:
    from moto.backends import get_backend

    return get_backend("sagemaker")[ACCOUNT][REGION]


# -- EC2 -----------------------------------------------------------------------------------
def moto_instance(instance_id: str) -> Any:
    return ec2_backend().get_instance(instance_id)


def reclaim_instance(instance_id: str) -> None:
    """What EC2 shows after reclaiming a spot instance."""
    from moto.ec2.models.instances import StateReason

    instance = moto_instance(instance_id)
    instance._state.name, instance._state.code = "terminated", 48
    instance.state_reason = StateReason("Server.SpotInstanceTermination: Spot instance termination",
                                        "Server.SpotInstanceTermination")


def shut_down_instance(instance_id: str) -> None:
    """What the bootstrap's final ``shutdown -h now`` leaves (shutdown behaviour terminate)."""
    from moto.ec2.models.instances import StateReason

    instance = moto_instance(instance_id)
    instance._state.name, instance._state.code = "terminated", 48
    instance.state_reason = StateReason("Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                                        "Client.InstanceInitiatedShutdown")


def all_instances() -> list[Any]:
    return [i for r in ec2_backend().reservations.values() for i in r.instances]


def instance_tags(instance: Any) -> dict[str, str]:
    return dict(ec2_backend().tags.get(instance.id, {}))


@dataclass
class FaultPlan:
    """EC2 errors to send instead of moto's answers, decided per call.

    :param no_capacity: (instance type, subnet) pools that answer InsufficientInstanceCapacity to spot launches.
    :param quota_error: error code every spot launch answers with (e.g. MaxSpotInstanceCountExceeded).
    :param throttle_run: how many RunInstances calls answer RequestLimitExceeded first.
    :param throttle_describe: how many DescribeInstances-by-filter calls (find by tag) answer
        RequestLimitExceeded first.
    :param throttle_poll: how many DescribeInstances-by-id calls (the triggers' polls) answer
        RequestLimitExceeded first.
    :param spot_capacity: (instance type, subnet) -> how many spot instances that pool launches before
        it answers InsufficientInstanceCapacity (partial capacity: a gang gets only part of its nodes).
    """

    no_capacity: set[tuple[str, str | None]] = field(default_factory=set)
    quota_error: str | None = None
    throttle_run: int = 0
    throttle_describe: int = 0
    throttle_poll: int = 0
    spot_capacity: dict[tuple[str, str | None], int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str) -> int:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.calls[name]


def install_faults(monkeypatch: Any, plan: FaultPlan) -> FaultPlan:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend

    original_run = InstanceBackend.run_instances
    original_describe = InstanceBackend.describe_instances

    def run_instances(self: Any, image_id: str, count: int, user_data: Any, security_group_names: Any,
                      **kwargs: Any) -> Any:
        n = plan.count("RunInstances")
        if n <= plan.throttle_run:
            raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
        spot = bool(kwargs.get("instance_market_options"))
        pool = (kwargs.get("instance_type"), kwargs.get("subnet_id"))
        if spot and plan.quota_error:
            raise EC2ClientError(plan.quota_error, "Max spot instance count exceeded")
        over = spot and pool in plan.spot_capacity and plan.count(f"spot in {pool}") > plan.spot_capacity[pool]
        if spot and (pool in plan.no_capacity or over):
            raise EC2ClientError("InsufficientInstanceCapacity",
                                 f"We currently do not have sufficient {pool[0]} capacity in the subnet.")
        return original_run(self, image_id, count, user_data, security_group_names, **kwargs)

    def counted(original: Any) -> Any:
        # DescribeInstances by filters and by InstanceIds reach two different moto methods
        def describe(self: Any, *args: Any, **kwargs: Any) -> Any:
            n = plan.count("DescribeInstances")
            if original is original_by_ids:
                n = plan.count("DescribeInstances(InstanceIds)")
                if n <= plan.throttle_poll:
                    raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
            elif n <= plan.throttle_describe:
                raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
            return original(self, *args, **kwargs)
        return describe

    original_by_ids = InstanceBackend.get_reservations_by_instance_ids
    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)
    monkeypatch.setattr(InstanceBackend, "describe_instances", counted(original_describe))
    monkeypatch.setattr(InstanceBackend, "get_reservations_by_instance_ids", counted(original_by_ids))
    return plan


def make_network() -> dict[str, Any]:
    """A VPC with three subnets in three AZs, and an AMI id moto knows."""
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
        for i, az in enumerate("abc")
    ]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return {"vpc": vpc, "subnets": subnets, "image_id": image}


# -- SageMaker ------------------------------------------------------------------------------
class SageMakerCloud:
    """Makes moto's training jobs behave like running ones, and adds StopTrainingJob."""

    def __init__(self, monkeypatch: Any) -> None:
        from moto.sagemaker import models, responses

        original_init = models.FakeTrainingJob.__init__

        def init(job: Any, *args: Any, **kwargs: Any) -> None:
            original_init(job, *args, **kwargs)
            job.training_job_status, job.secondary_status = "InProgress", "Training"
            now = _now()
            job.secondary_status_transitions = [
                {"Status": "Starting", "StartTime": now, "EndTime": now, "StatusMessage": "Starting"},
                {"Status": "Training", "StartTime": now, "StatusMessage": "Training"},
            ]
            job.training_end_time = None

        def stop_training_job(backend: Any, training_job_name: str) -> None:
            job = backend.training_jobs[training_job_name]
            if job.training_job_status == "InProgress":
                job.training_job_status, job.secondary_status = "Stopped", "Stopped"
                _transition(job, "Stopped")

        def stop_response(resp: Any) -> Any:
            from moto.core.responses import ActionResult

            resp.sagemaker_backend.stop_training_job(resp._get_param("TrainingJobName"))
            return ActionResult({})

        monkeypatch.setattr(models.FakeTrainingJob, "__init__", init)
        monkeypatch.setattr(models.SageMakerModelBackend, "stop_training_job", stop_training_job, raising=False)
        monkeypatch.setattr(responses.SageMakerResponse, "stop_training_job", stop_response, raising=False)

    @staticmethod
    def job(name: str) -> Any:
        return sagemaker_backend().training_jobs[name]

    def jobs(self) -> dict[str, Any]:
        return dict(sagemaker_backend().training_jobs)

    def interrupt(self, name: str) -> None:
        """SageMaker reclaimed the spot instance and restarts the job in place."""
        job = self.job(name)
        _transition(job, "Interrupted", "Training job interrupted: spot capacity reclaimed")
        _transition(job, "Training", "Restarting from the last checkpoint")

    def complete(self, name: str, training_seconds: int, billable_seconds: int) -> None:
        job = self.job(name)
        job.training_job_status, job.secondary_status = "Completed", "Completed"
        job.training_time_in_seconds, job.billable_time_in_seconds = training_seconds, billable_seconds
        job.training_end_time = _now()
        _transition(job, "Completed")

    def max_wait_exceeded(self, name: str) -> None:
        job = self.job(name)
        job.training_job_status, job.secondary_status = "Stopped", "MaxWaitTimeExceeded"
        _transition(job, "MaxWaitTimeExceeded")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _transition(job: Any, status: str, message: str = "") -> None:
    now = _now()
    if job.secondary_status_transitions and "EndTime" not in job.secondary_status_transitions[-1]:
        job.secondary_status_transitions[-1]["EndTime"] = now
    job.secondary_status_transitions.append({"Status": status, "StartTime": now, "StatusMessage": message or status})


# -- the machine: what the training on an instance would do ----------------------------------
def checkpoint_prefix_of(handle: Any) -> str:
    return handle.result_uri.rsplit("/_results/", 1)[0]


class EC2Machine:
    """Plays the instance of each attempt: resume, commit checkpoints, then end as scripted.

    :param storage_options: s3fs options reaching moto's S3.
    :param endings: attempt number -> ``"reclaim"``, ``"finish"``, ``"fail"`` or ``"keep"``
        (leave it running).
    :param total_steps: the training's length.
    :param steps_per_attempt: steps an attempt commits before its ending.
    """

    def __init__(self, storage_options: dict[str, Any], endings: dict[int, str], total_steps: int = 120,
                 steps_per_attempt: int = 40) -> None:
        self.storage_options = storage_options
        self.endings = endings
        self.total_steps = total_steps
        self.steps_per_attempt = steps_per_attempt
        self.resumed_from: dict[int, int] = {}
        self.handles: list[Any] = []

    def __call__(self, handle: Any) -> None:
        from airflow_spot_training.runtime.checkpoint import CheckpointManager

        self.handles.append(handle)
        attempt = int(handle.attempt)
        ending = self.endings.get(attempt, "finish")
        manager = CheckpointManager(checkpoint_prefix_of(handle), keep_last=None,
                                    storage_options=self.storage_options)
        latest = manager.latest()
        start = latest.step if latest else 0
        self.resumed_from.setdefault(attempt, start)
        if ending == "keep":
            return
        end = self.total_steps if ending == "finish" else min(start + self.steps_per_attempt, self.total_steps)
        for step in range(start + 20, end + 1, 20):
            manager.save(step, {"model.bin": f"weights at {step}".encode()}, total_steps=self.total_steps,
                         attempt=attempt)
        if ending == "reclaim":
            reclaim_instance(handle.instance_id)
            return
        manager.write_result(attempt, {"exit_code": 0 if ending == "finish" else 3, "attempt": attempt,
                                       "token": handle.token})
        shut_down_instance(handle.instance_id)


def install_sagemaker_quota_error(monkeypatch: Any) -> None:
    """Every CreateTrainingJob answers ResourceLimitExceeded, as SageMaker does past a quota."""
    from moto.sagemaker.exceptions import SagemakerClientError
    from moto.sagemaker.models import SageMakerModelBackend

    class ResourceLimitExceeded(SagemakerClientError):
        code = "ResourceLimitExceeded"

    def create_training_job(self: Any, **kwargs: Any) -> Any:
        raise ResourceLimitExceeded("The account-level service limit 'ml.g5.xlarge for spot training job usage' "
                                    "is 0 Instances")

    monkeypatch.setattr(SageMakerModelBackend, "create_training_job", create_training_job)


class SageMakerMachine:
    """Plays SageMaker's side of each wait: commit checkpoints, then interrupt, complete or time out.

    :param cloud: the SageMaker state editor.
    :param storage_options: s3fs options reaching moto's S3.
    :param script: what happens at each successive wait: ``"interrupt"`` (SageMaker reclaims
        and restarts the job in place), ``"complete"``, ``"max-wait"``, ``"keep"``.
    """

    def __init__(self, cloud: SageMakerCloud, storage_options: dict[str, Any], script: list[str],
                 total_steps: int = 120) -> None:
        self.cloud = cloud
        self.storage_options = storage_options
        self.script = list(script)
        self.total_steps = total_steps
        self.resumed_from: list[tuple[str, int]] = []

    def __call__(self, handle: Any) -> None:
        from airflow_spot_training.runtime.checkpoint import CheckpointManager

        name = handle.job_name
        action = self.script.pop(0)
        job = self.cloud.job(name)
        prefix = job.checkpoint_config["S3Uri"]
        manager = CheckpointManager(prefix, keep_last=None, storage_options=self.storage_options)
        latest = manager.latest()
        start = latest.step if latest else 0
        self.resumed_from.append((name, start))
        if action == "keep":
            return
        end = self.total_steps if action == "complete" else min(start + 40, self.total_steps)
        for step in range(start + 20, end + 1, 20):  # what SageMaker syncs from LocalPath to S3Uri
            manager.save(step, {"model.bin": f"weights at {step}".encode()}, total_steps=self.total_steps)
        if action == "interrupt":
            self.cloud.interrupt(name)
        elif action == "complete":
            self.cloud.complete(name, training_seconds=1000, billable_seconds=300)
        elif action == "max-wait":
            self.cloud.max_wait_exceeded(name)
