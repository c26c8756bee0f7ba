"""The SageMaker backend: managed spot training jobs, one job per attempt.

Launch
    ``CreateTrainingJob`` with ``EnableManagedSpotTraining=True``, ``MaxWaitTimeInSeconds``
    and ``CheckpointConfig.S3Uri`` = the task's checkpoint prefix; an on-demand attempt
    is the same job without spot, on the same ``S3Uri``, so it resumes from the same
    checkpoints. Job names are deterministic per attempt (``<prefix>-<run_key>-a<N>``):
    ``launch`` describes the name first and re-attaches to a job that exists, so a
    retry never creates a renamed duplicate.

Preemptions
    SageMaker restarts an interrupted spot job by itself. Each restart leaves a
    ``SecondaryStatusTransitions`` entry with ``Status == "Interrupted"``; while the job
    is ``InProgress`` the backend reports it ``running`` with that count, the trigger
    fires ``interrupted`` when it grows, and the operator's policy either keeps waiting
    or stops the job and launches an on-demand one. ``MaxWaitTimeExceeded`` (spot never
    finished in time) is reported as ``capacity_unavailable``.

Cost
    ``BillableTimeInSeconds`` against ``TrainingTimeInSeconds`` (times ``InstanceCount``)
    gives the measured savings of each attempt, which the ledger records.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_spot_training.backends.aws_connection import (
    S3StorageOptions,
    error_code,
    error_message,
    make_hook,
)
from airflow_spot_training.backends.base import (
    CAPACITY_UNAVAILABLE,
    FAILED,
    PENDING,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    AttemptStatus,
    BackendConfigError,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
)
from airflow_spot_training.core import contract as C
from airflow_spot_training.core.policy import Capacity

INTERRUPTED = "Interrupted"
MAX_WAIT_EXCEEDED = "MaxWaitTimeExceeded"
STARTING_SECONDARY = frozenset({"Starting", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading",
                                "DownloadingTrainingImage", "Pending"})
#: longest job_name_prefix: 63 characters minus "-<20-hex run key>-a<up to 4 digits>"
MAX_PREFIX = 63 - 1 - 20 - 6
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_NOT_FOUND = re.compile(r"not find|not found|does not exist", re.I)
DEFAULT_LOCAL_PATH = "/opt/ml/checkpoints"


class SageMakerSpotBackend(SpotBackend):
    """Run each attempt as a SageMaker training job, managed spot first, on-demand after escalation.

    :param image_uri: the training image (ECR URI).
    :param role_arn: the execution role SageMaker assumes (needs S3 access to the
        checkpoint prefix and ``output_s3_uri``).
    :param instance_type: the ML instance type, e.g. ``ml.g5.xlarge``.
    :param instance_count: instances per job.
    :param volume_size_gb: the ML storage volume per instance.
    :param max_runtime: ``MaxRuntimeInSeconds``: training seconds one job may use.
    :param max_wait: ``MaxWaitTimeInSeconds`` of spot jobs: training plus waiting for spot
        capacity; at least ``max_runtime``. Default: twice ``max_runtime``.
    :param command: ``ContainerEntrypoint`` override, if the image's entry point is not the training.
    :param arguments: ``ContainerArguments``.
    :param hyperparameters: string-valued hyperparameters.
    :param environment: extra environment variables (the contract is added).
    :param input_data_config: ``InputDataConfig`` channels, as the API takes them.
    :param output_s3_uri: ``OutputDataConfig.S3OutputPath``; default: ``<checkpoint prefix>/_output``.
    :param job_name_prefix: job names are ``<prefix>-<run key>-a<attempt>`` (at most 36 characters).
    :param checkpoint_local_path: ``CheckpointConfig.LocalPath``; the training is told to
        checkpoint there (``SPOT_TRAINING_CHECKPOINT_URI``) and SageMaker syncs it to the prefix.
    :param vpc_config: ``VpcConfig`` (subnets and security groups), if the job runs in a VPC.
    :param tags: extra tags for the job.
    :param on_demand_price_per_hour: USD per instance-hour of ``instance_type``; cost is billable
        seconds at this price (SageMaker reports spot savings as fewer billable seconds).
    :param aws_conn_id: the Airflow AWS connection (``aws_default``).
    :param region_name: the region; default: the connection's.
    :param botocore_config: extra botocore ``Config`` arguments.
    """

    kind = "sagemaker"
    default_restart_overhead = 300.0

    def __init__(
        self,
        *,
        image_uri: str | None = None,
        role_arn: str | None = None,
        instance_type: str | None = None,
        instance_count: int = 1,
        volume_size_gb: int = 50,
        max_runtime: int = 24 * 3600,
        max_wait: int | None = None,
        command: list[str] | None = None,
        arguments: list[str] | None = None,
        hyperparameters: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        input_data_config: list[dict[str, Any]] | None = None,
        output_s3_uri: str | None = None,
        job_name_prefix: str = "spot-training",
        checkpoint_local_path: str = DEFAULT_LOCAL_PATH,
        vpc_config: dict[str, list[str]] | None = None,
        tags: dict[str, str] | None = None,
        on_demand_price_per_hour: float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        botocore_config: dict[str, Any] | None = None,
    ) -> None:
        self.image_uri = image_uri
        self.role_arn = role_arn
        self.instance_type = instance_type
        self.instance_count = instance_count
        self.volume_size_gb = volume_size_gb
        self.max_runtime = max_runtime
        self.max_wait = max_wait if max_wait is not None else (
            2 * max_runtime if isinstance(max_runtime, int) else None)
        self.command = list(command) if command else None
        self.arguments = list(arguments) if arguments else None
        self.hyperparameters = dict(hyperparameters or {})
        self.environment = dict(environment or {})
        self.input_data_config = list(input_data_config) if input_data_config else None
        self.output_s3_uri = output_s3_uri
        self.job_name_prefix = job_name_prefix
        self.checkpoint_local_path = checkpoint_local_path
        self.vpc_config = vpc_config
        self.tags = dict(tags or {})
        self.on_demand_price_per_hour = on_demand_price_per_hour
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.botocore_config = botocore_config
        self._hook: Any = None
        self._storage = S3StorageOptions(aws_conn_id, region_name)
        self.validate()

    # =====================================================================================
    # configuration
    # =====================================================================================
    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "image_uri": self.image_uri,
            "role_arn": self.role_arn,
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "volume_size_gb": self.volume_size_gb,
            "max_runtime": self.max_runtime,
            "max_wait": self.max_wait,
            "command": self.command,
            "arguments": self.arguments,
            "hyperparameters": self.hyperparameters,
            "environment": self.environment,
            "input_data_config": self.input_data_config,
            "output_s3_uri": self.output_s3_uri,
            "job_name_prefix": self.job_name_prefix,
            "checkpoint_local_path": self.checkpoint_local_path,
            "vpc_config": self.vpc_config,
            "tags": self.tags,
            "on_demand_price_per_hour": self.on_demand_price_per_hour,
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "botocore_config": self.botocore_config,
        }

    def validate(self) -> None:
        for name in ("image_uri", "role_arn", "instance_type"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                example = {"image_uri": "'123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest'",
                           "role_arn": "'arn:aws:iam::123456789012:role/SageMakerTraining'",
                           "instance_type": "'ml.g5.xlarge'"}[name]
                raise BackendConfigError(f"SageMakerSpotBackend needs {name}={example}.")
        if not self.role_arn.startswith("arn:"):  # type: ignore[union-attr]
            raise BackendConfigError(f"role_arn={self.role_arn!r} must be an IAM role ARN (arn:aws:iam::...:role/...).")
        if not self.instance_type.startswith("ml."):  # type: ignore[union-attr]
            raise BackendConfigError(
                f"instance_type={self.instance_type!r} is not a SageMaker type; they start with 'ml.' (ml.g5.xlarge)."
            )
        for name in ("instance_count", "volume_size_gb", "max_runtime"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BackendConfigError(f"{name}={value!r} must be a positive integer.")
        if not isinstance(self.max_wait, int) or isinstance(self.max_wait, bool) or self.max_wait < self.max_runtime:
            raise BackendConfigError(
                f"max_wait={self.max_wait!r} must be an integer >= max_runtime={self.max_runtime}: SageMaker counts "
                "the training itself inside MaxWaitTimeInSeconds."
            )
        if (not isinstance(self.job_name_prefix, str) or len(self.job_name_prefix) > MAX_PREFIX
                or not _NAME.match(self.job_name_prefix)):
            raise BackendConfigError(
                f"job_name_prefix={self.job_name_prefix!r} must be 1-{MAX_PREFIX} letters, digits and hyphens, "
                "starting and ending with a letter or digit (job names are <prefix>-<run key>-a<attempt>)."
            )
        if self.output_s3_uri is not None and not str(self.output_s3_uri).startswith("s3://"):
            raise BackendConfigError(f"output_s3_uri={self.output_s3_uri!r} must be an s3:// URI.")
        if any(not isinstance(v, str) for v in self.hyperparameters.values()):
            raise BackendConfigError("hyperparameters: SageMaker takes string values only; str() them.")
        if self.on_demand_price_per_hour is not None and (
            not isinstance(self.on_demand_price_per_hour, (int, float)) or self.on_demand_price_per_hour <= 0
        ):
            raise BackendConfigError(f"on_demand_price_per_hour={self.on_demand_price_per_hour!r} must be positive.")

    def storage_options(self) -> dict[str, Any]:
        return self._storage.get()

    @property
    def hook(self) -> Any:
        if self._hook is None:
            self._hook = make_hook(self.aws_conn_id, self.region_name, "sagemaker", self.botocore_config)
        return self._hook

    @property
    def client(self) -> Any:
        return self.hook.conn

    # =====================================================================================
    # launching
    # =====================================================================================
    def job_name(self, request: LaunchRequest) -> str:
        """The attempt's deterministic job name."""
        return f"{self.job_name_prefix}-{request.contract.run_key}-a{request.attempt}"

    def create_params(self, request: LaunchRequest) -> dict[str, Any]:
        """The ``CreateTrainingJob`` arguments of one attempt."""
        contract = request.contract
        prefix = contract.checkpoint_uri.rstrip("/")
        env = {**self.environment, **contract.to_env(), C.CHECKPOINT_URI: self.checkpoint_local_path,
               "SPOT_TRAINING_CHECKPOINT_S3_URI": prefix}
        spot = request.capacity is Capacity.SPOT
        algorithm: dict[str, Any] = {"TrainingImage": self.image_uri, "TrainingInputMode": "File"}
        if self.command:
            algorithm["ContainerEntrypoint"] = self.command
        if self.arguments:
            algorithm["ContainerArguments"] = self.arguments
        stopping: dict[str, int] = {"MaxRuntimeInSeconds": self.max_runtime}
        if spot:
            stopping["MaxWaitTimeInSeconds"] = int(self.max_wait)  # type: ignore[arg-type]
        tags = {**self.tags, **{f"spot-training:{k.replace('_', '-')}": str(v)[:256] for k, v in request.labels.items()},
                "spot-training:token": request.token, "spot-training:capacity": request.capacity.value}
        params: dict[str, Any] = {
            "TrainingJobName": self.job_name(request),
            "AlgorithmSpecification": algorithm,
            "RoleArn": self.role_arn,
            "OutputDataConfig": {"S3OutputPath": self.output_s3_uri or f"{prefix}/_output"},
            "ResourceConfig": {"InstanceType": self.instance_type, "InstanceCount": self.instance_count,
                               "VolumeSizeInGB": self.volume_size_gb},
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": spot,
            "CheckpointConfig": {"S3Uri": prefix, "LocalPath": self.checkpoint_local_path},
            "Environment": env,
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }
        if self.hyperparameters:
            params["HyperParameters"] = self.hyperparameters
        if self.input_data_config:
            params["InputDataConfig"] = self.input_data_config
        if self.vpc_config:
            params["VpcConfig"] = self.vpc_config
        return params

    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        handle = self.find(request)
        if handle is not None:
            return handle
        try:
            self.client.create_training_job(**self.create_params(request))
        except Exception as e:
            if error_code(e) == "ResourceInUse":  # created by a call that raced this one
                return self._handle(request)
            raise self._action_required(e, request) from e
        return self._handle(request)

    def find(self, request: LaunchRequest) -> dict[str, Any] | None:
        """The attempt's job, if it was created: found by its deterministic name."""
        try:
            self.client.describe_training_job(TrainingJobName=self.job_name(request))
        except Exception as e:
            # moto says "Could not find training job"; SageMaker "Requested resource not found."
            if error_code(e) == "ValidationException" and _NOT_FOUND.search(error_message(e)):
                return None
            raise
        return self._handle(request)

    def _handle(self, request: LaunchRequest) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "job_name": self.job_name(request),
            "region": str(self.hook.conn_region_name or ""),
            "token": request.token,
            "attempt": request.attempt,
            "capacity": request.capacity.value,
            "pool": f"{self.instance_type}x{self.instance_count}",
            "instance_count": self.instance_count,
        }

    def _action_required(self, error: Exception, request: LaunchRequest) -> CloudActionRequired:
        code, message = error_code(error), error_message(error)
        usage = "spot training job usage" if request.capacity is Capacity.SPOT else "training job usage"
        if code == "ResourceLimitExceeded":
            return CloudActionRequired(
                f"SageMaker refused CreateTrainingJob with ResourceLimitExceeded: raise the Service Quotas quota "
                f"'{self.instance_type} for {usage}' (Amazon SageMaker) to at least {self.instance_count}, or pick "
                f"another instance_type. ({message})"
            )
        if code in ("AccessDeniedException", "AccessDenied"):
            return CloudActionRequired(
                f"SageMaker refused CreateTrainingJob with {code}: the role of connection {self.aws_conn_id!r} needs "
                "sagemaker:CreateTrainingJob, sagemaker:DescribeTrainingJob, sagemaker:StopTrainingJob, "
                f"sagemaker:AddTags and iam:PassRole on {self.role_arn}. ({message})"
            )
        if code == "ValidationException":
            return CloudActionRequired(f"SageMaker rejected the training job parameters: {message}")
        return CloudActionRequired(f"SageMaker CreateTrainingJob failed with {code or type(error).__name__}: {message}")

    # =====================================================================================
    # watching
    # =====================================================================================
    def describe(self, handle: dict[str, Any]) -> AttemptStatus:
        return classify_training_job(self.client.describe_training_job(TrainingJobName=handle["job_name"]), handle)

    async def poll(self, handle: dict[str, Any]) -> AttemptStatus:
        async with await self.hook.get_async_conn() as client:
            job = await client.describe_training_job(TrainingJobName=handle["job_name"])
        return classify_training_job(job, handle)

    # =====================================================================================
    # stopping
    # =====================================================================================
    def stop(self, handle: dict[str, Any]) -> None:
        try:
            self.client.stop_training_job(TrainingJobName=handle["job_name"])
        except Exception as e:
            if error_code(e) != "ValidationException":  # already stopped or finished
                raise

    async def astop(self, handle: dict[str, Any]) -> None:
        async with await self.hook.get_async_conn() as client:
            try:
                await client.stop_training_job(TrainingJobName=handle["job_name"])
            except Exception as e:
                if error_code(e) != "ValidationException":
                    raise

    def price_per_hour(self, handle: dict[str, Any], capacity: Capacity) -> float | None:
        """Both capacities bill at the on-demand rate; spot savings show as fewer billable seconds."""
        if self.on_demand_price_per_hour is None:
            return None
        return float(self.on_demand_price_per_hour) * self.instance_count


def classify_training_job(job: dict[str, Any], handle: dict[str, Any]) -> AttemptStatus:
    """Map a ``DescribeTrainingJob`` response to an attempt status.

    Preemptions are the ``SecondaryStatusTransitions`` entries with ``Status ==
    "Interrupted"``; ``StatusMessage`` text is never read.
    """
    transitions = job.get("SecondaryStatusTransitions") or []
    preemptions = sum(1 for t in transitions if t.get("Status") == INTERRUPTED)
    status = job.get("TrainingJobStatus", "")
    secondary = job.get("SecondaryStatus", "")
    count = int(handle.get("instance_count") or 1)
    details: dict[str, Any] = {"job_name": handle.get("job_name"), "secondary_status": secondary,
                               "interruptions": preemptions}
    training = job.get("TrainingTimeInSeconds")
    billable = job.get("BillableTimeInSeconds")
    if training is not None:
        details["training_seconds"] = float(training) * count
    if billable is not None:
        details["billable_seconds"] = float(billable) * count
        if training:
            details["measured_savings"] = round(1 - float(billable) / float(training), 6)
    started = _epoch(job.get("TrainingStartTime"))
    ended = _epoch(job.get("TrainingEndTime"))
    common = {"preemptions": preemptions, "started_at": started, "details": details}
    if status == "InProgress" or status == "Stopping":
        state = PENDING if secondary in STARTING_SECONDARY else RUNNING
        return AttemptStatus(state=state, reason=f"{status}/{secondary}", **common)
    if status == "Completed":
        return AttemptStatus(state=SUCCEEDED, reason="Completed", ended_at=ended, **common)
    if secondary == MAX_WAIT_EXCEEDED:
        return AttemptStatus(state=CAPACITY_UNAVAILABLE, ended_at=ended,
                             reason="MaxWaitTimeExceeded: spot capacity did not let the job finish in max_wait",
                             **common)
    if status == "Stopped":
        return AttemptStatus(state=STOPPED, reason=f"Stopped/{secondary}", ended_at=ended, **common)
    reason = job.get("FailureReason") or f"{status}/{secondary}"
    return AttemptStatus(state=FAILED, reason=reason, ended_at=ended, **common)


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    if isinstance(value, (int, float)):
        return float(value)
    return None
