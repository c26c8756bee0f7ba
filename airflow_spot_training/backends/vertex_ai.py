"""Vertex AI backend: each attempt is one CustomJob, ``SPOT`` first, ``STANDARD`` after escalation.

Launch
    ``CreateCustomJob`` with ``job_spec.scheduling.strategy = SPOT`` (``STANDARD`` on
    demand) and ``job_spec.base_output_directory`` set to the parent of the task's
    checkpoint prefix, which must end in ``/checkpoints``: Vertex sets
    ``AIP_CHECKPOINT_DIR=<base_output_directory>/checkpoints/``, so that variable *is*
    the checkpoint prefix, for every attempt and every Airflow retry; the environment
    contract (``SPOT_TRAINING_*``) is added to every worker pool's container. The job's
    display name is ``spot-training-<run_key>-a<N>`` and its labels carry the attempt
    token: ``CreateCustomJob`` has no request id, so :meth:`launch` first looks the job up
    by that label (:meth:`find`) and creates one only when there is none.

Detection: the fields relied on, and why
    * ``state``: the job's lifecycle. ``JOB_STATE_SUCCEEDED`` -> succeeded;
      ``QUEUED``/``PENDING``/``PAUSED`` -> pending; ``RUNNING``/``UPDATING`` -> running;
      ``CANCELLING``/``CANCELLED`` -> stopped; ``EXPIRED`` and other failures -> failed.
    * ``error.code`` (a ``google.rpc.Code``), only for ``JOB_STATE_FAILED`` jobs that ran on
      ``SPOT``: Vertex reports reclaimed spot workers and spot stockouts as a failed job
      with ``RESOURCE_EXHAUSTED`` (8), ``UNAVAILABLE`` (14) or ``ABORTED`` (10). There is no
      preemption counter on a CustomJob, and the message text is not a stable interface,
      so the backend never parses ``error.message``; it reports it as the reason.
    * ``start_time``: tells a preemption (the job had started: work was done and
      checkpoints may exist) from a stockout before any worker ran (capacity unavailable).
    * ``create_time``: a ``SPOT`` job still queued or pending after ``max_pending_seconds``
      is cancelled and reported as capacity unavailable, so the policy can wait or
      escalate; the next attempt resumes from the same ``AIP_CHECKPOINT_DIR``.
    Worker restarts that Vertex performs in place (VM maintenance, a non-zero exit below
    its retry limit) leave no trace on the CustomJob resource; they are invisible here
    and need no action, since the restarted worker resumes from ``AIP_CHECKPOINT_DIR``.

Polling uses ``JobServiceAsyncClient`` (gRPC asyncio) in the triggerer; credentials
are fetched in a thread, so nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import PositiveFloat, field_validator, model_validator

from airflow_spot_training.backends import google_cloud as gc
from airflow_spot_training.backends.base import (
    CHECKPOINT_SYNC_DOC,
    TAIL_LINES,
    AttemptHandle,
    AttemptLink,
    AttemptState,
    AttemptStatus,
    BackendConfigError,
    CheckpointSync,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    TrainingLog,
    argument,
    check_env_names,
)
from airflow_spot_training.core.contract import secret_refs_env
from airflow_spot_training.core.epoch import epoch_seconds
from airflow_spot_training.core.folder_sync import vertex_ai_container_command
from airflow_spot_training.core.policy import Capacity

NAME_PREFIX = "spot-training"
CHECKPOINT_DIR = "checkpoints"
#: google.rpc.Code values a failed SPOT job reports when its capacity was reclaimed or never found
SPOT_RECLAIM_CODES = {8: "RESOURCE_EXHAUSTED", 10: "ABORTED", 14: "UNAVAILABLE"}
#: google.rpc.Code of a stockout: a job of either kind that failed with it before any worker ran found no capacity
STOCKOUT_CODE = 8
FIELD_TO_ARGUMENT = {
    "machine_type": "machine_type",
    "machine type": "machine_type",
    "accelerator": "accelerator_type / accelerator_count",
    "image_uri": "image_uri",
    "image": "image_uri",
    "replica_count": "replica_count",
    "worker_pool_specs": "worker_pool_specs",
    "service_account": "service_account",
    "network": "network",
    "base_output_directory": "checkpoint_prefix",
    "labels": "labels",
    "location": "region",
}
JOB_CONSOLE = gc.CONSOLE + "/vertex-ai/locations/{region}/training/{job_id}/cpu?project={project}"
LOGS_CONSOLE = (gc.CONSOLE + "/logs/query;query=resource.type%3D%22ml_job%22%0Aresource.labels.job_id%3D%22{job_id}"
                "%22?project={project}")
REGION_RE = re.compile(r"^[a-z]+-[a-z]+\d+$")


def base_output_directory(checkpoint_prefix: str) -> str:
    """The ``base_output_directory`` that makes ``AIP_CHECKPOINT_DIR`` the checkpoint prefix."""
    prefix = checkpoint_prefix.rstrip("/")
    if posixpath.basename(prefix) != CHECKPOINT_DIR:
        raise BackendConfigError(
            f"checkpoint_prefix {checkpoint_prefix!r} must end in '/{CHECKPOINT_DIR}' for Vertex AI, "
            f"which sets AIP_CHECKPOINT_DIR=<base_output_directory>/{CHECKPOINT_DIR}/; use e.g. "
            f"'gs://bucket/runs/{{{{ run_id }}}}/{CHECKPOINT_DIR}' "
            "(VertexAISpotTrainingOperator does this by default)."
        )
    return posixpath.dirname(prefix)


@dataclass(frozen=True, kw_only=True)
class VertexAIHandle(AttemptHandle):
    """One Vertex AI CustomJob running one attempt."""

    name: str
    display_name: str = ""
    project: str = ""
    region: str = ""

    @property
    def job_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class VertexAISpotBackend(SpotBackend):
    """Run each attempt as a Vertex AI CustomJob on spot capacity, then on standard capacity.

    Give either ``machine_type`` + ``image_uri`` (one worker pool) or ``worker_pool_specs``.
    """

    kind = "vertex_ai"
    supports_gangs = True
    handle_type = VertexAIHandle
    default_restart_overhead = 180.0
    link_labels = ("Vertex AI job", "Logs")
    checkpoint_schemes = frozenset({"gs", "file"})

    region: str = argument(doc="the Vertex AI region, e.g. 'us-central1'")
    machine_type: str | None = argument(
        None, "machine type of the single worker pool, e.g. 'n1-standard-8'", templated=True, example="n1-standard-4")
    image_uri: str | None = argument(None, "the training container image", templated=True,
                                     example="us-docker.pkg.dev/project/repo/trainer:1")
    command: list[str] | None = argument(None, "the container's entrypoint override", templated=True)
    args: list[str] | None = argument(None, "the container's arguments", templated=True)
    accelerator_type: str | None = argument(None, "e.g. 'NVIDIA_TESLA_T4'; None for none")
    accelerator_count: int = argument(0, "accelerators per replica", ge=0)
    replica_count: int = argument(1, "replicas of the single worker pool", ge=1)
    worker_pool_specs: list[dict[str, Any]] | None = argument(
        None, "full WorkerPoolSpec dicts (JSON-safe), instead of machine_type/image_uri/...", templated=True,
        example=[{"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1,
                  "container_spec": {"image_uri": "us-docker.pkg.dev/project/repo/trainer:1"}}])
    env: dict[str, str] = argument(
        {}, "extra environment variables for every container (the contract is added); visible in the job "
            "spec, so pass secrets through secrets=", templated=True)
    secrets: dict[str, str] = argument(
        {}, "environment variables the training resolves from Secret Manager at start "
            "(runtime.read_contract()): {'HF_TOKEN': 'projects/p/secrets/hf-token/versions/latest'}")
    service_account: str | None = argument(None, "the service account the job runs as")
    network: str | None = argument(None, "the VPC network to peer, projects/<number>/global/networks/<name>")
    labels: dict[str, str] = argument({}, "extra labels for the job")
    timeout_seconds: PositiveFloat | None = argument(None, "scheduling.timeout of each job")
    max_pending_seconds: PositiveFloat | None = argument(
        1800.0, "a spot job still queued or pending after this long is reported as 'no spot capacity' (and "
                "cancelled); None waits for as long as Vertex does")
    restart_job_on_worker_restart: bool = argument(False, "scheduling.restart_job_on_worker_restart")
    checkpoint_sync: CheckpointSync = argument(
        None, CHECKPOINT_SYNC_DOC + "; the container's command runs under the wrapper (the image needs "
              "airflow-spot-training[runtime] and gcsfs; needs command= and the single worker pool form)")
    project_id: str | None = argument(None, "the project; default: the project of the connection")
    gcp_conn_id: str = argument(gc.DEFAULT_CONN_ID, "the Airflow connection with the credentials", min_length=1)
    impersonation_chain: str | list[str] | None = argument(
        None, "a service account to impersonate (or a chain)")
    emulator_host: str | None = argument(
        None, "host:port of an emulator of the Vertex AI JobService (plain gRPC, no credentials). For tests")
    logging_emulator_host: str | None = argument(None, gc.LOGGING_EMULATOR_DOC)
    storage_options: dict[str, Any] | None = argument(None, "gcsfs options for reading the checkpoint prefix")
    spot_price_per_hour: PositiveFloat | None = argument(
        None, "price of the job's machines on spot, for cost estimates")
    on_demand_price_per_hour: PositiveFloat | None = argument(
        None, "price on standard capacity, for cost and savings")

    _client: Any = None
    _async_client: Any = None  # (loop, client, project)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not REGION_RE.fullmatch(value):
            raise ValueError("give a Vertex AI region such as 'us-central1'.")
        return value

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_env_names(value))

    @model_validator(mode="after")
    def _one_shape(self) -> VertexAISpotBackend:
        if self.worker_pool_specs is not None:
            if self.machine_type or self.image_uri:
                raise ValueError("give either worker_pool_specs=[...] or machine_type= and image_uri=, not both.")
            if not self.worker_pool_specs:
                raise ValueError("worker_pool_specs must be a non-empty list of WorkerPoolSpec dicts.")
            self._worker_pool_specs({})  # raises on fields Vertex does not know
        elif not self.machine_type:
            raise ValueError("give machine_type='...' (e.g. 'n1-standard-8'), or worker_pool_specs=[...].")
        elif not self.image_uri:
            raise ValueError("give image_uri='...': the training container image, e.g. "
                             "'us-docker.pkg.dev/my-project/train/trainer:1'.")
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError("accelerator_count is set but accelerator_type is not; give "
                             "accelerator_type='NVIDIA_TESLA_T4' (for example).")
        if self.checkpoint_sync is not None and (self.worker_pool_specs is not None or not self.command):
            raise ValueError("checkpoint_sync wraps the container's command: give command=[...] (the training's "
                             "entrypoint) with machine_type= and image_uri=, not worker_pool_specs.")
        gc.validate_common(project_id=self.project_id, emulator_host=self.emulator_host)
        return self

    def checkpoint_storage_options(self) -> dict[str, Any]:
        return dict(self.storage_options or {})

    def default_checkpoint_prefix(self, task_prefix: str) -> str:
        """``<task prefix>/checkpoints``: Vertex's ``AIP_CHECKPOINT_DIR`` is then the prefix."""
        return f"{task_prefix.rstrip('/')}/{CHECKPOINT_DIR}"

    def check_checkpoint_prefix(self, prefix: str) -> None:
        super().check_checkpoint_prefix(prefix)
        base_output_directory(prefix)

    def price_per_hour(self, handle: AttemptHandle | None, capacity: Capacity) -> float | None:
        return self.spot_price_per_hour if capacity is Capacity.SPOT else self.on_demand_price_per_hour

    def model_uri(self, checkpoint_prefix: str) -> str | None:
        """Vertex's ``AIP_MODEL_DIR``: ``<base output directory>/model``."""
        return f"{base_output_directory(checkpoint_prefix).rstrip('/')}/model"

    # -- clients -------------------------------------------------------------------------
    def _api_endpoint(self) -> str:
        return f"{self.region}-aiplatform.googleapis.com"

    def _project(self, conn_project: str | None) -> str:
        project = self.project_id or conn_project
        if not project:
            raise CloudActionRequired(
                f"no project: give project_id= to the backend, or set the project in the "
                f"{self.gcp_conn_id!r} connection.")
        return project

    def _connect(self) -> tuple[Any, str]:
        """(JobServiceClient, project); blocking, made once per backend object."""
        if self._client is None:
            from google.cloud.aiplatform_v1 import JobServiceClient

            if self.emulator_host:
                import grpc
                from google.cloud.aiplatform_v1.services.job_service.transports import JobServiceGrpcTransport

                channel = grpc.insecure_channel(self._emulator_target())
                client = JobServiceClient(transport=JobServiceGrpcTransport(channel=channel))
                self._client = (client, self._project(None))
            else:
                credentials, conn_project = gc.credentials_and_project(
                    self.gcp_conn_id, self.impersonation_chain, None)
                client = JobServiceClient(credentials=credentials,
                                          client_options={"api_endpoint": self._api_endpoint()})
                self._client = (client, self._project(conn_project))
        return self._client

    async def _aconnect(self) -> tuple[Any, str]:
        """(JobServiceAsyncClient, project) bound to the running event loop."""
        loop = asyncio.get_running_loop()
        if self._async_client is None or self._async_client[0] is not loop:
            from google.cloud.aiplatform_v1 import JobServiceAsyncClient

            if self.emulator_host:
                from grpc import aio
                from google.cloud.aiplatform_v1.services.job_service.transports import (
                    JobServiceGrpcAsyncIOTransport,
                )

                channel = aio.insecure_channel(self._emulator_target())
                transport = JobServiceGrpcAsyncIOTransport(channel=channel)
                client, project = JobServiceAsyncClient(transport=transport), self._project(None)
            else:
                credentials, conn_project = await asyncio.to_thread(
                    gc.credentials_and_project, self.gcp_conn_id, self.impersonation_chain, None)
                client = JobServiceAsyncClient(credentials=credentials,
                                               client_options={"api_endpoint": self._api_endpoint()})
                project = self._project(conn_project)
            self._async_client = (loop, client, project)
        return self._async_client[1], self._async_client[2]

    def _emulator_target(self) -> str:
        assert self.emulator_host
        return self.emulator_host.split("://", 1)[-1].rstrip("/")

    def _parent(self, project: str) -> str:
        return f"projects/{project}/locations/{self.region}"

    # -- the job -------------------------------------------------------------------------
    def check_gang(self, num_nodes: int) -> None:
        """A gang is two worker pools of this machine: the primary replica (rank 0) and ``num_nodes`` - 1 workers."""
        if num_nodes > 1 and (self.worker_pool_specs is not None or self.replica_count > 1):
            given = "worker_pool_specs" if self.worker_pool_specs is not None else f"replica_count={self.replica_count}"
            raise BackendConfigError(
                f"VertexAISpotBackend: {given} and the operator's num_nodes={num_nodes} both say how many replicas "
                "run; give it once: num_nodes (with machine_type= and image_uri=, replica_count=1), or your own "
                "worker_pool_specs with num_nodes=1.")

    def _worker_pool_specs(self, env: dict[str, str], num_nodes: int = 1) -> list[Any]:
        from google.cloud.aiplatform_v1.types import custom_job as cj

        env_vars = [{"name": k, "value": v} for k, v in env.items()]
        if self.worker_pool_specs is not None:
            specs = []
            for i, raw in enumerate(self.worker_pool_specs):
                try:
                    spec = cj.WorkerPoolSpec(raw)
                except (ValueError, TypeError, KeyError) as e:
                    raise BackendConfigError(f"worker_pool_specs[{i}] is not a WorkerPoolSpec: {e}") from e
                if spec.container_spec.image_uri:
                    spec.container_spec.env.extend(env_vars)
                elif spec.python_package_spec.executor_image_uri:
                    spec.python_package_spec.env.extend(env_vars)
                specs.append(spec)
            return specs
        machine: dict[str, Any] = {"machine_type": self.machine_type}
        if self.accelerator_type and self.accelerator_count:
            machine.update(accelerator_type=self.accelerator_type, accelerator_count=self.accelerator_count)
        container: dict[str, Any] = {"image_uri": self.image_uri, "env": env_vars}
        if self.command:
            container["command"] = (self.command if self.checkpoint_sync is None
                                    else vertex_ai_container_command(self.checkpoint_sync, self.command))
        if self.args:
            container["args"] = self.args
        if num_nodes > 1:  # Vertex's CLUSTER_SPEC ranks workerpool0 first, then workerpool1's replicas
            return [cj.WorkerPoolSpec(machine_spec=machine, replica_count=1, container_spec=container),
                    cj.WorkerPoolSpec(machine_spec=machine, replica_count=num_nodes - 1, container_spec=container)]
        return [cj.WorkerPoolSpec(machine_spec=machine, replica_count=self.replica_count,
                                  container_spec=container)]

    def _custom_job(self, request: LaunchRequest) -> Any:
        from google.cloud.aiplatform_v1.types import custom_job as cj
        from google.protobuf import duration_pb2

        spot = request.capacity is Capacity.SPOT
        scheduling = cj.Scheduling(
            strategy=cj.Scheduling.Strategy.SPOT if spot else cj.Scheduling.Strategy.STANDARD,
            restart_job_on_worker_restart=self.restart_job_on_worker_restart,
        )
        if self.timeout_seconds:
            scheduling.timeout = duration_pb2.Duration(seconds=int(self.timeout_seconds))
        spec = cj.CustomJobSpec(
            worker_pool_specs=self._worker_pool_specs(
                {**self.env, **request.contract.to_env(), **secret_refs_env(self.secrets)}, request.num_nodes),
            base_output_directory={
                "output_uri_prefix": base_output_directory(request.contract.checkpoint_uri)},
            scheduling=scheduling,
        )
        if self.service_account:
            spec.service_account = self.service_account
        if self.network:
            spec.network = self.network
        return cj.CustomJob(display_name=gc.attempt_name(NAME_PREFIX, request), job_spec=spec,
                            labels=gc.resource_labels(request, self.labels))

    def _handle(self, request: LaunchRequest, job: Any, project: str) -> VertexAIHandle:
        return VertexAIHandle(
            backend=self.kind, token=request.token, attempt=request.attempt, capacity=request.capacity.value,
            launched_at=time.time(), pool=self.region, name=job.name, display_name=job.display_name,
            project=project, region=self.region,
        )

    def _typed(self, handle: AttemptHandle) -> VertexAIHandle:
        job = self.load_handle(handle)
        assert isinstance(job, VertexAIHandle)
        return job

    def attempt_links(self, handle: AttemptHandle) -> list[AttemptLink]:
        job = self._typed(handle)
        if "/customJobs/" not in job.name:
            return []
        fields = {"region": job.region, "job_id": job.job_id, "project": job.project}
        return [AttemptLink("Vertex AI job", JOB_CONSOLE.format(**fields)),
                AttemptLink("Logs", LOGS_CONSOLE.format(**fields))]

    def training_log(self, handle: AttemptHandle, lines: int = TAIL_LINES) -> TrainingLog | None:
        """The job's last lines in Cloud Logging (every replica's output)."""
        job = self._typed(handle)
        if "/customJobs/" not in job.name:
            return None
        log_filter = f'resource.type="ml_job" AND resource.labels.job_id="{job.job_id}"'
        return gc.training_log_tail(self, job.project, log_filter, lines, f"Cloud Logging, job {job.job_id}")

    # -- worker side ---------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> VertexAIHandle:
        try:
            job = self._custom_job(request)
        except BackendConfigError as e:
            raise CloudActionRequired(str(e)) from e
        existing = self.find(request)
        if existing is not None:
            return existing
        client, project = self._connect()
        try:
            created = client.create_custom_job(parent=self._parent(project), custom_job=job,
                                               retry=gc.rate_limit_retry())
        except Exception as e:
            raise self._translate(e, f"creating CustomJob {job.display_name}", project) from e
        return self._handle(request, created, project)

    def find(self, request: LaunchRequest) -> VertexAIHandle | None:
        client, project = self._connect()
        token = gc.label_value(request.token)
        try:
            jobs = list(client.list_custom_jobs(request={
                "parent": self._parent(project), "filter": f'labels.spot-training-token="{token}"'},
                retry=gc.rate_limit_retry()))
        except Exception as e:
            raise self._translate(e, "listing CustomJobs", project) from e
        jobs = [j for j in jobs if j.labels.get("spot-training-token") == token]
        return self._handle(request, jobs[0], project) if jobs else None

    def describe(self, handle: AttemptHandle) -> AttemptStatus:
        """The job's attempt status; read-only (a stuck spot job is cancelled by :meth:`stop`)."""
        job_handle = self._typed(handle)
        client, project = self._connect()
        try:
            job = client.get_custom_job(name=job_handle.name, retry=gc.rate_limit_retry())
        except Exception as e:
            raise self._translate(e, f"reading CustomJob {job_handle.name}", project) from e
        return job_status(job, job_handle, self.max_pending_seconds)

    def stop(self, handle: AttemptHandle) -> None:
        from google.api_core import exceptions as gexc

        name = self._typed(handle).name
        client, project = self._connect()
        try:
            client.cancel_custom_job(name=name, retry=gc.rate_limit_retry())
        except (gexc.FailedPrecondition, gexc.NotFound):
            pass  # already final, or gone
        except Exception as e:
            raise self._translate(e, f"cancelling CustomJob {name}", project) from e

    # -- triggerer side ------------------------------------------------------------------
    async def poll(self, handle: AttemptHandle) -> AttemptStatus:
        job_handle = self._typed(handle)
        client, project = await self._aconnect()
        try:
            job = await client.get_custom_job(name=job_handle.name, retry=gc.rate_limit_retry_async())
        except Exception as e:
            raise self._translate(e, f"reading CustomJob {job_handle.name}", project) from e
        return job_status(job, job_handle, self.max_pending_seconds)

    async def astop(self, handle: AttemptHandle) -> None:
        from google.api_core import exceptions as gexc

        name = self._typed(handle).name
        client, project = await self._aconnect()
        try:
            await client.cancel_custom_job(name=name, retry=gc.rate_limit_retry_async())
        except (gexc.FailedPrecondition, gexc.NotFound):
            pass
        except Exception as e:
            raise self._translate(e, f"cancelling CustomJob {name}", project) from e

    def _translate(self, e: Exception, action: str, project: str | None) -> Exception:
        return gc.translate_http_error(e, service="Vertex AI", action=action, project=project,
                                       field_to_argument=FIELD_TO_ARGUMENT)


def job_status(job: Any, handle: VertexAIHandle, max_pending_seconds: float | None) -> AttemptStatus:
    """Map a CustomJob to an :class:`AttemptStatus` (a spot job pending too long: capacity unavailable)."""
    from google.cloud.aiplatform_v1.types import job_state

    states = job_state.JobState
    state = job.state
    spot = handle.capacity == Capacity.SPOT.value
    started = epoch_seconds(job.start_time)
    details = {"job": job.name, "state": states(state).name, "region": handle.region}
    common: dict[str, Any] = {"started_at": started, "ended_at": epoch_seconds(job.end_time), "details": details}
    if state == states.JOB_STATE_SUCCEEDED:
        return AttemptStatus(state=AttemptState.SUCCEEDED, reason="JOB_STATE_SUCCEEDED", **common)
    if state in (states.JOB_STATE_RUNNING, states.JOB_STATE_UPDATING):
        return AttemptStatus(state=AttemptState.RUNNING, reason=states(state).name, **common)
    if state in (states.JOB_STATE_QUEUED, states.JOB_STATE_PENDING, states.JOB_STATE_PAUSED,
                 states.JOB_STATE_UNSPECIFIED):
        waited = time.time() - (epoch_seconds(job.create_time) or handle.launched_at or time.time())
        if spot and max_pending_seconds is not None and waited >= max_pending_seconds:
            reason = (f"the spot job was still {states(state).name} after {waited:.0f} s "
                      f"(max_pending_seconds={max_pending_seconds:g}): no spot capacity")
            return AttemptStatus(state=AttemptState.CAPACITY_UNAVAILABLE, reason=reason, **common)
        return AttemptStatus(state=AttemptState.PENDING, reason=states(state).name, **common)
    if state in (states.JOB_STATE_CANCELLING, states.JOB_STATE_CANCELLED):
        return AttemptStatus(state=AttemptState.STOPPED, reason=states(state).name, **common)
    code, message = job.error.code, job.error.message
    details["error_code"] = code
    if state == states.JOB_STATE_FAILED and spot and code in SPOT_RECLAIM_CODES:
        what = f"{SPOT_RECLAIM_CODES[code]} on a SPOT job: {message}"
        if started is not None:
            return AttemptStatus(state=AttemptState.PREEMPTED, reason=f"preempted ({what})", preemptions=1, **common)
        return AttemptStatus(state=AttemptState.CAPACITY_UNAVAILABLE, reason=f"no spot capacity ({what})", **common)
    if state == states.JOB_STATE_FAILED and code == STOCKOUT_CODE and started is None:
        return AttemptStatus(state=AttemptState.CAPACITY_UNAVAILABLE, **common,
                             reason=f"no standard capacity for {handle.pool} (RESOURCE_EXHAUSTED before any worker "
                                    f"ran: {message})")
    reason = f"{states(state).name}: error code {code}: {message}" if code else states(state).name
    return AttemptStatus(state=AttemptState.FAILED, reason=reason, **common)
