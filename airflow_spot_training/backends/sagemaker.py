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
import time
from dataclasses import dataclass
from typing import Any

from pydantic import PositiveFloat, PositiveInt, field_validator, model_validator

from airflow_spot_training.backends.aws_connection import (
    S3StorageOptions,
    console_domain,
    error_code,
    error_message,
    make_hook,
)
from airflow_spot_training.backends.base import (
    AttemptHandle,
    TAIL_LINES,
    AttemptLink,
    AttemptState,
    AttemptStatus,
    BackendConfigError,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    TrainingLog,
    argument,
    check_env_names,
)
from airflow_spot_training.core import contract as spot_contract
from airflow_spot_training.core.epoch import epoch_seconds
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
JOB_CONSOLE = "https://console.{aws_domain}/sagemaker/home?region={region_name}#/jobs/{job_name}"
#: where SageMaker sends a training job's output: one stream per instance, ``<job name>/algo-<n>-<epoch>``
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
LOGS_CONSOLE = ("https://console.{aws_domain}/cloudwatch/home?region={region_name}#logsV2:log-groups/log-group/"
                "$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3D{job_name}")


@dataclass(frozen=True, kw_only=True)
class SageMakerHandle(AttemptHandle):
    """One SageMaker training job running one attempt."""

    job_name: str
    region: str = ""
    partition: str = "aws"
    instance_count: int = 1


class SageMakerSpotBackend(SpotBackend):
    """Run each attempt as a SageMaker training job, managed spot first, on-demand after escalation."""

    kind = "sagemaker"
    handle_type = SageMakerHandle
    default_restart_overhead = 300.0
    link_labels = ("SageMaker job", "Logs")
    checkpoint_schemes = frozenset({"s3"})
    supports_gangs = True

    image_uri: str = argument(doc="the training image (ECR URI), e.g. "
                                  "'123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest'",
                              templated=True, example="123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest")
    role_arn: str = argument(doc="the execution role SageMaker assumes (needs S3 access to the checkpoint prefix "
                                 "and output_s3_uri), e.g. 'arn:aws:iam::123456789012:role/SageMakerTraining'")
    instance_type: str = argument(doc="the ML instance type, e.g. 'ml.g5.xlarge'", templated=True,
                                  example="ml.m5.large")
    instance_count: PositiveInt = argument(1, "instances per job")
    volume_size_gb: PositiveInt = argument(50, "the ML storage volume per instance, GiB")
    max_runtime: PositiveInt = argument(24 * 3600, "MaxRuntimeInSeconds: training seconds one job may use")
    max_wait: PositiveInt | None = argument(
        None, "MaxWaitTimeInSeconds of spot jobs: training plus waiting for spot capacity, at least max_runtime; "
              "default: twice max_runtime")
    command: list[str] | None = argument(
        None, "ContainerEntrypoint override, if the image's entry point is not the training", templated=True)
    arguments: list[str] | None = argument(None, "ContainerArguments", templated=True)
    hyperparameters: dict[str, str] = argument({}, "string-valued hyperparameters", templated=True)
    environment: dict[str, str] = argument(
        {}, "extra environment variables (the contract is added); visible in the job description, so pass "
            "secrets through secrets=", templated=True)
    secrets: dict[str, str] = argument(
        {}, "environment variables the training resolves from AWS Secrets Manager at start "
            "(runtime.read_contract()): {'HF_TOKEN': 'arn:aws:secretsmanager:...' or a secret name}")
    input_data_config: list[dict[str, Any]] | None = argument(
        None, "InputDataConfig channels, as the API takes them", templated=True)
    output_s3_uri: str | None = argument(
        None, "OutputDataConfig.S3OutputPath; default: <checkpoint prefix>/_output", templated=True)
    job_name_prefix: str = argument("spot-training", f"job names are <prefix>-<run key>-a<attempt> "
                                                     f"(at most {MAX_PREFIX} characters)")
    checkpoint_local_path: str = argument(
        DEFAULT_LOCAL_PATH, "CheckpointConfig.LocalPath; the training is told to checkpoint there "
                            "(SPOT_TRAINING_CHECKPOINT_URI) and SageMaker syncs it to the prefix")
    vpc_config: dict[str, list[str]] | None = argument(
        None, "VpcConfig (subnets and security groups), if the job runs in a VPC")
    tags: dict[str, str] = argument({}, "extra tags for the job")
    on_demand_price_per_hour: PositiveFloat | None = argument(
        None, "USD per instance-hour of instance_type; cost is billable seconds at this price (SageMaker "
              "reports spot savings as fewer billable seconds)")
    aws_conn_id: str | None = argument("aws_default", "the Airflow AWS connection")
    region_name: str | None = argument(None, "the region; default: the connection's")
    botocore_config: dict[str, Any] | None = argument(None, "extra botocore Config arguments")
    verify: bool | str | None = argument(
        None, "SSL certificate verification, as in the Amazon provider: False, or a CA bundle path")

    _hook: Any = None

    def input_uris(self) -> list[str]:
        """The ``S3Uri`` of every ``input_data_config`` channel."""
        sources = [channel.get("DataSource", {}).get("S3DataSource", {}) for channel in self.input_data_config or []]
        return [source["S3Uri"] for source in sources if source.get("S3Uri")]

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        if not value.startswith("arn:"):
            raise ValueError("it must be an IAM role ARN (arn:aws:iam::...:role/...).")
        return value

    @field_validator("instance_type")
    @classmethod
    def _ml_type(cls, value: str) -> str:
        if not value.startswith("ml."):
            raise ValueError("it is not a SageMaker type; they start with 'ml.' (ml.g5.xlarge).")
        return value

    @field_validator("job_name_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if len(value) > MAX_PREFIX or not _NAME.match(value):
            raise ValueError(f"it must be 1-{MAX_PREFIX} letters, digits and hyphens, starting and ending with a "
                             "letter or digit (job names are <prefix>-<run key>-a<attempt>).")
        return value

    @field_validator("output_s3_uri")
    @classmethod
    def _s3(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("s3://"):
            raise ValueError("it must be an s3:// URI.")
        return value

    @field_validator("environment", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_env_names(value, "environment"))

    @model_validator(mode="after")
    def _max_wait(self) -> SageMakerSpotBackend:
        if self.max_wait is None:
            self.max_wait = 2 * self.max_runtime
        if self.max_wait < self.max_runtime:
            raise ValueError(
                f"max_wait={self.max_wait!r} must be >= max_runtime={self.max_runtime}: SageMaker counts the "
                "training itself inside MaxWaitTimeInSeconds."
            )
        return self

    def checkpoint_storage_options(self) -> dict[str, Any]:
        return S3StorageOptions(self.aws_conn_id, self.region_name, self.verify).get()

    @property
    def hook(self) -> Any:
        if self._hook is None:
            self._hook = make_hook(self.aws_conn_id, self.region_name, "sagemaker", self.botocore_config,
                                   self.verify)
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
        # a gang's ranks must see each other's shard records: they checkpoint to the prefix itself,
        # where a single node checkpoints to the local path SageMaker syncs
        local = prefix if contract.is_gang else self.checkpoint_local_path
        env = {**self.environment, **contract.to_env(), spot_contract.CHECKPOINT_URI: local,
               "SPOT_TRAINING_CHECKPOINT_S3_URI": prefix, **spot_contract.secret_refs_env(self.secrets)}
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
            "ResourceConfig": {"InstanceType": self.instance_type,
                               "InstanceCount": self.instance_count * request.num_nodes,
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

    def launch(self, request: LaunchRequest) -> SageMakerHandle:
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

    def find(self, request: LaunchRequest) -> SageMakerHandle | None:
        """The attempt's job, if it was created: found by its deterministic name."""
        try:
            self.client.describe_training_job(TrainingJobName=self.job_name(request))
        except Exception as e:
            # moto says "Could not find training job"; SageMaker "Requested resource not found."
            if error_code(e) == "ValidationException" and _NOT_FOUND.search(error_message(e)):
                return None
            raise
        return self._handle(request)

    def _handle(self, request: LaunchRequest) -> SageMakerHandle:
        return SageMakerHandle(
            backend=self.kind, token=request.token, attempt=request.attempt, capacity=request.capacity.value,
            launched_at=time.time(), pool=f"{self.instance_type}x{self.instance_count * request.num_nodes}",
            job_name=self.job_name(request), region=str(self.hook.conn_region_name or ""),
            partition=str(getattr(self.hook, "conn_partition", None) or "aws"), instance_count=self.instance_count,
        )

    def check_gang(self, num_nodes: int) -> None:
        """A gang is ``InstanceCount=num_nodes``; with ``instance_count`` > 1 too, the count would be said twice."""
        if num_nodes > 1 and self.instance_count > 1:
            raise BackendConfigError(
                f"SageMakerSpotBackend: instance_count={self.instance_count} and the operator's num_nodes={num_nodes} "
                "both set the job's InstanceCount; give it once: num_nodes (each node told its rank, billed per "
                "node), with instance_count=1.")

    def _typed(self, handle: AttemptHandle) -> SageMakerHandle:
        job = self.load_handle(handle)
        assert isinstance(job, SageMakerHandle)
        return job

    def attempt_links(self, handle: AttemptHandle) -> list[AttemptLink]:
        job = self._typed(handle)
        fields = {"aws_domain": console_domain(job.partition), "region_name": job.region, "job_name": job.job_name}
        return [AttemptLink("SageMaker job", JOB_CONSOLE.format(**fields)),
                AttemptLink("Logs", LOGS_CONSOLE.format(**fields))]

    def training_log(self, handle: AttemptHandle, lines: int = TAIL_LINES) -> TrainingLog | None:
        """The job's last lines in CloudWatch Logs (every instance's stream, by time)."""
        job = self._typed(handle)
        logs = make_hook(self.aws_conn_id, self.region_name, "logs", self.botocore_config, self.verify).conn
        try:
            streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job.job_name}/")
        except logs.exceptions.ResourceNotFoundException:
            return None  # the job never started a container
        names = [stream["logStreamName"] for stream in streams.get("logStreams", [])]
        events: list[tuple[int, str]] = []
        for name in names:
            host = name.split("/", 1)[1].rsplit("-", 1)[0] if "/" in name else name
            for event in logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=name, startFromHead=False,
                                             limit=lines)["events"]:
                message = event["message"] if len(names) == 1 else f"[{host}] {event['message']}"
                events.append((int(event["timestamp"]), message))
        if not events:
            return None
        events.sort(key=lambda item: item[0])
        return TrainingLog(f"CloudWatch Logs {LOG_GROUP}/{job.job_name}", [message for _, message in events][-lines:])

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
    def describe(self, handle: AttemptHandle) -> AttemptStatus:
        job = self._typed(handle)
        return classify_training_job(self.client.describe_training_job(TrainingJobName=job.job_name), job)

    async def poll(self, handle: AttemptHandle) -> AttemptStatus:
        job = self._typed(handle)
        async with await self.hook.get_async_conn() as client:
            description = await client.describe_training_job(TrainingJobName=job.job_name)
        return classify_training_job(description, job)

    # =====================================================================================
    # stopping
    # =====================================================================================
    def stop(self, handle: AttemptHandle) -> None:
        try:
            self.client.stop_training_job(TrainingJobName=self._typed(handle).job_name)
        except Exception as e:
            if error_code(e) != "ValidationException":  # already stopped or finished
                raise

    async def astop(self, handle: AttemptHandle) -> None:
        job_name = self._typed(handle).job_name
        async with await self.hook.get_async_conn() as client:
            try:
                await client.stop_training_job(TrainingJobName=job_name)
            except Exception as e:
                if error_code(e) != "ValidationException":
                    raise

    def price_per_hour(self, handle: AttemptHandle | None, capacity: Capacity) -> float | None:
        """Both capacities bill at the on-demand rate; spot savings show as fewer billable seconds."""
        if self.on_demand_price_per_hour is None:
            return None
        return float(self.on_demand_price_per_hour) * self.instance_count


def classify_training_job(job: dict[str, Any], handle: SageMakerHandle) -> AttemptStatus:
    """Map a ``DescribeTrainingJob`` response to an attempt status.

    Preemptions are the ``SecondaryStatusTransitions`` entries with ``Status ==
    "Interrupted"``; ``StatusMessage`` text is never read. A job that failed with a
    ``FailureReason`` starting ``CapacityError`` (SageMaker's documented prefix for
    ``InsufficientCapacityError``) found no capacity.
    """
    transitions = job.get("SecondaryStatusTransitions") or []
    preemptions = sum(1 for t in transitions if t.get("Status") == INTERRUPTED)
    status = job.get("TrainingJobStatus", "")
    secondary = job.get("SecondaryStatus", "")
    details = _job_details(job, handle, secondary, preemptions)
    common: dict[str, Any] = {"preemptions": preemptions, "started_at": epoch_seconds(job.get("TrainingStartTime")),
                              "details": details}
    ended = epoch_seconds(job.get("TrainingEndTime"))
    if status in ("InProgress", "Stopping"):
        state = AttemptState.PENDING if secondary in STARTING_SECONDARY else AttemptState.RUNNING
        return AttemptStatus(state=state, reason=f"{status}/{secondary}", **common)
    if status == "Completed":
        return AttemptStatus(state=AttemptState.SUCCEEDED, reason="Completed", ended_at=ended, **common)
    if secondary == MAX_WAIT_EXCEEDED:
        return AttemptStatus(state=AttemptState.CAPACITY_UNAVAILABLE, ended_at=ended,
                             reason="MaxWaitTimeExceeded: spot capacity did not let the job finish in max_wait",
                             **common)
    if status == "Stopped":
        return AttemptStatus(state=AttemptState.STOPPED, reason=f"Stopped/{secondary}", ended_at=ended, **common)
    reason = job.get("FailureReason") or f"{status}/{secondary}"
    state = AttemptState.CAPACITY_UNAVAILABLE if reason.startswith("CapacityError") else AttemptState.FAILED
    return AttemptStatus(state=state, reason=reason, ended_at=ended, **common)


def _job_details(job: dict[str, Any], handle: SageMakerHandle, secondary: str, interruptions: int) -> dict[str, Any]:
    count = int(handle.instance_count or 1)
    details: dict[str, Any] = {"job_name": handle.job_name, "secondary_status": secondary,
                               "interruptions": interruptions}
    training = job.get("TrainingTimeInSeconds")
    billable = job.get("BillableTimeInSeconds")
    if training is not None:
        details["training_seconds"] = float(training) * count
    if billable is not None:
        details["billable_seconds"] = float(billable) * count
        if training:
            details["measured_savings"] = round(1 - float(billable) / float(training), 6)
    model = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if model:
        details["model_uri"] = model
    return details
