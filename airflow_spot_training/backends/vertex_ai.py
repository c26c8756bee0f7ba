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
import time
from typing import Any

from airflow_spot_training.backends import google_cloud as gc
from airflow_spot_training.backends.base import (
    CAPACITY_UNAVAILABLE,
    FAILED,
    PENDING,
    PREEMPTED,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    AttemptStatus,
    BackendConfigError,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
)
from airflow_spot_training.core.policy import Capacity

NAME_PREFIX = "spot-training"
CHECKPOINT_DIR = "checkpoints"
#: google.rpc.Code values a failed SPOT job reports when its capacity was reclaimed or never found
SPOT_RECLAIM_CODES = {8: "RESOURCE_EXHAUSTED", 10: "ABORTED", 14: "UNAVAILABLE"}
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


class VertexAISpotBackend(SpotBackend):
    """Run each attempt as a Vertex AI CustomJob on spot capacity, then on standard capacity.

    Give either ``machine_type`` + ``image_uri`` (one worker pool) or ``worker_pool_specs``.

    :param region: the Vertex AI region, e.g. ``"us-central1"``.
    :param machine_type: machine type of the single worker pool, e.g. ``"n1-standard-8"``.
    :param image_uri: the training container image.
    :param command: the container's entrypoint override.
    :param args: the container's arguments.
    :param accelerator_type: e.g. ``"NVIDIA_TESLA_T4"``; ``None`` for none.
    :param accelerator_count: accelerators per replica.
    :param replica_count: replicas of the single worker pool.
    :param worker_pool_specs: full ``WorkerPoolSpec`` dicts (JSON-safe), instead of the above.
    :param env: extra environment variables for every container (the contract is added).
    :param service_account: the service account the job runs as.
    :param network: the VPC network to peer, ``projects/<number>/global/networks/<name>``.
    :param labels: extra labels for the job.
    :param timeout_seconds: ``scheduling.timeout`` of each job.
    :param max_pending_seconds: a spot job still queued or pending after this long is
        cancelled and reported as "no spot capacity"; ``None`` waits for as long as Vertex does.
    :param restart_job_on_worker_restart: ``scheduling.restart_job_on_worker_restart``.
    :param project_id: the project; default: the project of the connection.
    :param gcp_conn_id: the Airflow connection with the credentials.
    :param impersonation_chain: a service account to impersonate (or a chain).
    :param emulator_host: ``host:port`` of an emulator of the Vertex AI JobService
        (plain gRPC, no credentials). For tests.
    :param storage_options: gcsfs options for reading the checkpoint prefix.
    :param spot_price_per_hour: price of the job's machines on spot, for cost estimates.
    :param on_demand_price_per_hour: price on standard capacity, for cost and savings.
    """

    kind = "vertex_ai"
    default_restart_overhead = 180.0

    def __init__(
        self,
        *,
        region: str | None = None,
        machine_type: str | None = None,
        image_uri: str | None = None,
        command: list[str] | None = None,
        args: list[str] | None = None,
        accelerator_type: str | None = None,
        accelerator_count: int = 0,
        replica_count: int = 1,
        worker_pool_specs: list[dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
        service_account: str | None = None,
        network: str | None = None,
        labels: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
        max_pending_seconds: float | None = 1800.0,
        restart_job_on_worker_restart: bool = False,
        project_id: str | None = None,
        gcp_conn_id: str = gc.DEFAULT_CONN_ID,
        impersonation_chain: str | list[str] | None = None,
        emulator_host: str | None = None,
        storage_options: dict[str, Any] | None = None,
        spot_price_per_hour: float | None = None,
        on_demand_price_per_hour: float | None = None,
    ) -> None:
        self.region = region
        self.machine_type = machine_type
        self.image_uri = image_uri
        self.command = list(command) if command is not None else None
        self.args = list(args) if args is not None else None
        self.accelerator_type = accelerator_type
        self.accelerator_count = accelerator_count
        self.replica_count = replica_count
        self.worker_pool_specs = worker_pool_specs
        self.env = dict(env or {})
        self.service_account = service_account
        self.network = network
        self.labels = dict(labels or {})
        self.timeout_seconds = timeout_seconds
        self.max_pending_seconds = max_pending_seconds
        self.restart_job_on_worker_restart = restart_job_on_worker_restart
        self.project_id = project_id
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self.emulator_host = emulator_host
        self._storage_options = storage_options
        self.spot_price_per_hour = spot_price_per_hour
        self.on_demand_price_per_hour = on_demand_price_per_hour
        self._client: tuple[Any, str] | None = None
        self._async_client: tuple[Any, Any, str] | None = None  # (loop, client, project)
        self.validate()

    def __getstate__(self) -> dict[str, Any]:
        # clients hold channels and credentials: never copy or pickle them with the DAG
        return {**self.__dict__, "_client": None, "_async_client": None}

    # -- configuration -------------------------------------------------------------------
    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "machine_type": self.machine_type,
            "image_uri": self.image_uri,
            "command": self.command,
            "args": self.args,
            "accelerator_type": self.accelerator_type,
            "accelerator_count": self.accelerator_count,
            "replica_count": self.replica_count,
            "worker_pool_specs": self.worker_pool_specs,
            "env": self.env,
            "service_account": self.service_account,
            "network": self.network,
            "labels": self.labels,
            "timeout_seconds": self.timeout_seconds,
            "max_pending_seconds": self.max_pending_seconds,
            "restart_job_on_worker_restart": self.restart_job_on_worker_restart,
            "project_id": self.project_id,
            "gcp_conn_id": self.gcp_conn_id,
            "impersonation_chain": self.impersonation_chain,
            "emulator_host": self.emulator_host,
            "storage_options": self._storage_options,
            "spot_price_per_hour": self.spot_price_per_hour,
            "on_demand_price_per_hour": self.on_demand_price_per_hour,
        }

    def validate(self) -> None:
        import re

        if not isinstance(self.region, str) or not re.fullmatch(r"[a-z]+-[a-z]+\d+", self.region):
            raise BackendConfigError(
                f"VertexAISpotBackend needs region='...', a Vertex AI region such as 'us-central1' "
                f"(got {self.region!r}).")
        if self.worker_pool_specs is not None:
            if self.machine_type or self.image_uri:
                raise BackendConfigError(
                    "give either worker_pool_specs=[...] or machine_type= and image_uri=, not both.")
            if not isinstance(self.worker_pool_specs, list) or not self.worker_pool_specs \
                    or not all(isinstance(s, dict) for s in self.worker_pool_specs):
                raise BackendConfigError(
                    "worker_pool_specs must be a non-empty list of WorkerPoolSpec dicts.")
            self._worker_pool_specs({})  # raises on fields Vertex does not know
        else:
            if not self.machine_type:
                raise BackendConfigError(
                    "VertexAISpotBackend needs machine_type='...' (e.g. 'n1-standard-8'), "
                    "or worker_pool_specs=[...].")
            if not self.image_uri:
                raise BackendConfigError("VertexAISpotBackend needs image_uri='...': the training container "
                                         "image, e.g. 'us-docker.pkg.dev/my-project/train/trainer:1'.")
        for name, value in (("command", self.command), ("args", self.args)):
            if value is not None and not all(isinstance(a, str) for a in value):
                raise BackendConfigError(f"{name} must be a list of strings.")
        if not isinstance(self.accelerator_count, int) or self.accelerator_count < 0:
            raise BackendConfigError(
                f"accelerator_count={self.accelerator_count!r} must be 0 or a positive integer.")
        if self.accelerator_count and not self.accelerator_type:
            raise BackendConfigError("accelerator_count is set but accelerator_type is not; give "
                                     "accelerator_type='NVIDIA_TESLA_T4' (for example).")
        if not isinstance(self.replica_count, int) or self.replica_count < 1:
            raise BackendConfigError(f"replica_count={self.replica_count!r} must be a positive integer.")
        for name, value in (("timeout_seconds", self.timeout_seconds),
                            ("max_pending_seconds", self.max_pending_seconds)):
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise BackendConfigError(f"{name}={value!r} must be a positive number of seconds, or None.")
        for name, mapping in (("env", self.env), ("labels", self.labels)):
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
                raise BackendConfigError(f"{name} must map strings to strings.")
        gc.validate_common(project_id=self.project_id, gcp_conn_id=self.gcp_conn_id,
                           emulator_host=self.emulator_host, storage_options=self._storage_options)

    def storage_options(self) -> dict[str, Any]:
        return dict(self._storage_options or {})

    def price_per_hour(self, handle: dict[str, Any], capacity: Capacity) -> float | None:
        return self.spot_price_per_hour if capacity is Capacity.SPOT else self.on_demand_price_per_hour

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
    def _worker_pool_specs(self, env: dict[str, str]) -> list[Any]:
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
            container["command"] = self.command
        if self.args:
            container["args"] = self.args
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
            worker_pool_specs=self._worker_pool_specs({**self.env, **request.contract.to_env()}),
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

    def _handle(self, request: LaunchRequest, job: Any, project: str) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "name": job.name,
            "display_name": job.display_name,
            "project": project,
            "region": self.region,
            "token": request.token,
            "attempt": request.attempt,
            "capacity": request.capacity.value,
            "pool": self.region,
            "launched_at": time.time(),
        }

    # -- worker side ---------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        try:
            job = self._custom_job(request)
        except BackendConfigError as e:
            raise CloudActionRequired(str(e)) from e
        existing = self.find(request)
        if existing is not None:
            return existing
        client, project = self._connect()
        try:
            created = client.create_custom_job(parent=self._parent(project), custom_job=job)
        except Exception as e:
            raise self._translate(e, f"creating CustomJob {job.display_name}", project) from e
        return self._handle(request, created, project)

    def find(self, request: LaunchRequest) -> dict[str, Any] | None:
        client, project = self._connect()
        token = gc.label_value(request.token)
        try:
            jobs = list(client.list_custom_jobs(request={
                "parent": self._parent(project), "filter": f'labels.spot-training-token="{token}"'}))
        except Exception as e:
            raise self._translate(e, "listing CustomJobs", project) from e
        jobs = [j for j in jobs if j.labels.get("spot-training-token") == token]
        return self._handle(request, jobs[0], project) if jobs else None

    def describe(self, handle: dict[str, Any]) -> AttemptStatus:
        client, project = self._connect()
        try:
            job = client.get_custom_job(name=handle["name"])
        except Exception as e:
            raise self._translate(e, f"reading CustomJob {handle['name']}", project) from e
        status, cancel = job_status(job, handle, self.max_pending_seconds)
        if cancel:
            self.stop(handle)
        return status

    def stop(self, handle: dict[str, Any]) -> None:
        from google.api_core import exceptions as gexc

        client, project = self._connect()
        try:
            client.cancel_custom_job(name=handle["name"])
        except (gexc.FailedPrecondition, gexc.NotFound):
            pass  # already final, or gone
        except Exception as e:
            raise self._translate(e, f"cancelling CustomJob {handle['name']}", project) from e

    # -- triggerer side ------------------------------------------------------------------
    async def poll(self, handle: dict[str, Any]) -> AttemptStatus:
        client, project = await self._aconnect()
        try:
            job = await client.get_custom_job(name=handle["name"])
        except Exception as e:
            raise self._translate(e, f"reading CustomJob {handle['name']}", project) from e
        status, cancel = job_status(job, handle, self.max_pending_seconds)
        if cancel:
            await self.astop(handle)
        return status

    async def astop(self, handle: dict[str, Any]) -> None:
        from google.api_core import exceptions as gexc

        client, project = await self._aconnect()
        try:
            await client.cancel_custom_job(name=handle["name"])
        except (gexc.FailedPrecondition, gexc.NotFound):
            pass
        except Exception as e:
            raise self._translate(e, f"cancelling CustomJob {handle['name']}", project) from e

    def _translate(self, e: Exception, action: str, project: str | None) -> Exception:
        return gc.translate_http_error(e, service="Vertex AI", action=action, project=project,
                                       field_to_argument=FIELD_TO_ARGUMENT)


def job_status(job: Any, handle: dict[str, Any],
               max_pending_seconds: float | None) -> tuple[AttemptStatus, bool]:
    """Map a CustomJob to an :class:`AttemptStatus`; the flag says "cancel it" (a stuck spot job)."""
    from google.cloud.aiplatform_v1.types import job_state

    S = job_state.JobState
    state = job.state
    spot = handle.get("capacity") == Capacity.SPOT.value
    started = _epoch(job.start_time)
    ended = _epoch(job.end_time)
    details = {"job": job.name, "state": S(state).name, "region": handle.get("region")}
    common = {"started_at": started, "ended_at": ended, "details": details}
    if state == S.JOB_STATE_SUCCEEDED:
        return AttemptStatus(state=SUCCEEDED, reason="JOB_STATE_SUCCEEDED", **common), False
    if state in (S.JOB_STATE_RUNNING, S.JOB_STATE_UPDATING):
        return AttemptStatus(state=RUNNING, reason=S(state).name, **common), False
    if state in (S.JOB_STATE_QUEUED, S.JOB_STATE_PENDING, S.JOB_STATE_PAUSED, S.JOB_STATE_UNSPECIFIED):
        waited = time.time() - (_epoch(job.create_time) or handle.get("launched_at") or time.time())
        if spot and max_pending_seconds is not None and waited >= max_pending_seconds:
            reason = (f"the spot job was still {S(state).name} after {waited:.0f} s "
                      f"(max_pending_seconds={max_pending_seconds:g}): no spot capacity; cancelled")
            return AttemptStatus(state=CAPACITY_UNAVAILABLE, reason=reason, **common), True
        return AttemptStatus(state=PENDING, reason=S(state).name, **common), False
    if state in (S.JOB_STATE_CANCELLING, S.JOB_STATE_CANCELLED):
        return AttemptStatus(state=STOPPED, reason=S(state).name, **common), False
    code, message = job.error.code, job.error.message
    details["error_code"] = code
    if state == S.JOB_STATE_FAILED and spot and code in SPOT_RECLAIM_CODES:
        what = f"{SPOT_RECLAIM_CODES[code]} on a SPOT job: {message}"
        if started is not None:
            status = AttemptStatus(state=PREEMPTED, reason=f"preempted ({what})", preemptions=1, **common)
            return status, False
        return AttemptStatus(state=CAPACITY_UNAVAILABLE, reason=f"no spot capacity ({what})", **common), False
    reason = f"{S(state).name}: error code {code}: {message}" if code else S(state).name
    return AttemptStatus(state=FAILED, reason=reason, **common), False


def _epoch(ts: Any) -> float | None:
    if ts is None:
        return None
    if hasattr(ts, "timestamp"):  # proto-plus gives DatetimeWithNanoseconds
        value = ts.timestamp()
        return value if value > 0 else None
    seconds = getattr(ts, "seconds", 0) + getattr(ts, "nanos", 0) / 1e9
    return seconds or None
