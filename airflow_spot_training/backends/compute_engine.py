"""Compute Engine backend: each attempt is one spot (or standard) VM.

Launch
    ``instances.insert`` with ``scheduling = {provisioningModel: SPOT,
    instanceTerminationAction: DELETE, automaticRestart: false, onHostMaintenance:
    TERMINATE}`` (``STANDARD`` once escalated to on-demand), down a ladder of zones:
    a zone whose insert operation fails with ``ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS]``
    is skipped for the next; when every zone is out, the operator's policy hears
    "spot unavailable". Every insert carries a ``requestId`` derived (uuid5) from the
    attempt token and the zone, so a repeated launch is the same request; the VM name
    is ``spot-<run_key>-a<N>`` and its labels name the Airflow task and attempt, so a
    retry after a worker crash finds it (:meth:`find`) instead of starting another.

Bootstrap
    The packaged startup script (``bootstrap/gce_startup_script.sh``) runs the
    command with the environment contract, writes the result record under the
    checkpoint prefix when the command ends, and deletes the VM.

Detection (:meth:`describe`)
    * result record with ``exit_code == 0`` -> succeeded;
    * VM ``PROVISIONING``/``STAGING`` -> pending, ``RUNNING`` -> running;
    * otherwise a zone operation with ``operationType == "compute.instances.preempted"``
      whose ``targetLink`` is the VM -> preempted;
    * a result record with another exit code -> failed with that code;
    * anything else (VM gone or stopped with no record and no preemption) -> failed,
      with the reason.

Gangs (``num_nodes`` > 1)
    N VMs in one zone, all or nothing: ``spot-<run_key>-a<N>`` is rank 0 and
    ``...-n<R>`` rank R, each with its own ``requestId``, rank label and contract (its
    rank; rank 0's internal DNS name ``<vm>.<zone>.c.<project>.internal`` as the
    rendezvous). A zone that cannot hold the whole gang has the VMs already created
    deleted and counts as out of capacity: the next zone is tried. One VM preempted ends
    the attempt as one preemption; the operator then deletes the others.

The google-cloud-compute library has no async client, so the triggerer polls
through :meth:`describe` in a thread (the base class's :meth:`poll`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import time
from dataclasses import dataclass
from importlib import resources
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
    CapacityUnavailable,
    CheckpointSync,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    TrainingLog,
    argument,
    check_env_names,
    combine_gang,
)
from airflow_spot_training.core.contract import node_result_uri, secret_refs_env
from airflow_spot_training.core.epoch import epoch_seconds
from airflow_spot_training.core.folder_sync import compute_engine_command
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.core.pool_health import in_order
from airflow_spot_training.runtime.results import MalformedRecord, read_json_record

PREEMPTED_OPERATION = "compute.instances.preempted"
CAPACITY_ERROR_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
})
QUOTA_ERROR_CODES = frozenset({"QUOTA_EXCEEDED"})
NAME_PREFIX = "spot"
DEFAULT_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
STARTUP_SCRIPT = "gce_startup_script.sh"
ZONE_RE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
SERVICE_ACCOUNT_RE = re.compile(r"^[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com$|^\d+-compute@developer\.gserviceaccount\.com$")
#: fields of an Instance the API may name in an error, and the argument that sets each
FIELD_TO_ARGUMENT = {
    "machineType": "machine_type",
    "disks": "image / boot_disk_size_gb",
    "sourceImage": "image",
    "networkInterfaces": "network / subnetwork",
    "network": "network",
    "subnetwork": "subnetwork",
    "guestAccelerators": "accelerator_type / accelerator_count",
    "acceleratorType": "accelerator_type",
    "serviceAccounts": "service_account",
    "labels": "labels",
    "metadata": "env / extra_metadata",
    "zone": "zones",
    "project": "project_id",
}
_PENDING_STATUSES = {"PROVISIONING", "STAGING"}
_RUNNING_STATUSES = {"RUNNING"}
INSTANCE_CONSOLE = gc.CONSOLE + "/compute/instancesDetail/zones/{zone}/instances/{name}?project={project}"
LOGS_CONSOLE = (gc.CONSOLE + "/logs/query;query=resource.type%3D%22gce_instance%22%0Alabels.%22compute.googleapis"
                ".com%2Fresource_name%22%3D%22{name}%22?project={project}")


def startup_script_template() -> str:
    """The documented startup script every VM runs (see ``bootstrap/gce_startup_script.sh``)."""
    return (resources.files("airflow_spot_training") / "bootstrap" / STARTUP_SCRIPT).read_text()


@dataclass(frozen=True, kw_only=True)
class ComputeEngineHandle(AttemptHandle):
    """One Compute Engine VM running one attempt."""

    project: str
    zone: str | None
    name: str
    result_uri: str = ""
    zones_tried: list[str] = dataclasses.field(default_factory=list)
    #: a gang's VM names, in rank order (``name`` is rank 0's); empty for one node
    node_names: list[str] = dataclasses.field(default_factory=list)

    def nodes(self) -> list[ComputeEngineHandle]:
        """One handle per node (rank order), each with its own VM and result record."""
        if not self.node_names:
            return [self]
        return [dataclasses.replace(self, name=name, node_names=[], result_uri=node_result_uri(self.result_uri, rank))
                for rank, name in enumerate(self.node_names)]


class ComputeEngineSpotBackend(SpotBackend):
    """Run each attempt on its own Compute Engine VM: spot first, standard after escalation."""

    kind = "compute_engine"
    handle_type = ComputeEngineHandle
    default_restart_overhead = 120.0
    link_labels = ("Compute Engine VM", "Logs")
    checkpoint_schemes = frozenset({"gs", "s3", "file"})
    releases_after_success = True  # the startup script deletes its VM, unless that failed
    supports_gangs = True

    zones: list[str] = argument(
        doc="the zone ladder, tried in order for every launch, e.g. ['us-central1-a', 'us-central1-b']")
    machine_type: str = argument(doc="the machine type, e.g. 'n1-standard-8'", templated=True, example="e2-small")
    command: str | list[str] = argument(
        doc="the training command run on the VM (a shell string or an argument list), e.g. "
            "['python3', '/opt/train.py']", templated=True, example="true")
    service_account: str = argument(
        doc="the e-mail of the service account the VM runs as, e.g. 'trainer@my-project.iam.gserviceaccount.com' "
            "(it needs storage.objects.create on the checkpoint bucket and compute.instances.delete on itself)")
    project_id: str | None = argument(None, "the project; default: the project of the connection")
    image: str = argument(DEFAULT_IMAGE, "the boot image (a family or image URL)", templated=True)
    boot_disk_size_gb: int = argument(50, "size of the boot disk, GiB (10 or more)", ge=10)
    accelerator_type: str | None = argument(None, "GPU type, e.g. 'nvidia-tesla-t4'; None for none")
    accelerator_count: int = argument(0, "how many GPUs", ge=0)
    min_cpu_platform: str | None = argument(None, "the oldest CPU platform to accept, e.g. 'Intel Ice Lake'")
    network: str | None = argument(None, "the VPC network (default global/networks/default)")
    subnetwork: str | None = argument(None, "the subnetwork, when the network has custom subnets")
    external_ip: bool = argument(True, "give the VM an ephemeral external IP (needed without Cloud NAT)")
    env: dict[str, str] = argument(
        {}, "extra environment variables for the training (the contract is added); visible in the VM's "
            "metadata, so pass secrets through secrets=", templated=True)
    secrets: dict[str, str] = argument(
        {}, "environment variables resolved on the VM from Secret Manager: "
            "{'HF_TOKEN': 'projects/my-project/secrets/hf-token/versions/latest'}")
    labels: dict[str, str] = argument({}, "extra labels for the VM")
    extra_metadata: dict[str, str] = argument({}, "extra instance metadata items")
    startup_script: str | None = argument(
        None, "replaces the packaged startup script; it must honour the same contract")
    checkpoint_sync: CheckpointSync = argument(
        None, CHECKPOINT_SYNC_DOC + "; the folder is /mnt/checkpoint unless local_dir is set (the image needs "
              "python3 with airflow-spot-training[runtime] and gcsfs)")
    operation_timeout: float = argument(120.0, "seconds launch waits for an insert operation in each zone", gt=0)
    gcp_conn_id: str = argument(gc.DEFAULT_CONN_ID, "the Airflow connection with the credentials", min_length=1)
    impersonation_chain: str | list[str] | None = argument(
        None, "a service account to impersonate (or a chain), as in the Google provider's operators")
    emulator_host: str | None = argument(
        None, "base URL of an emulator of the Compute Engine API (http://127.0.0.1:PORT); no credentials "
              "are used. For tests")
    logging_emulator_host: str | None = argument(None, gc.LOGGING_EMULATOR_DOC)
    storage_options: dict[str, Any] | None = argument(
        None, "gcsfs options for reading the checkpoint prefix and result records (default: Application "
              "Default Credentials)")
    spot_price_per_hour: PositiveFloat | None = argument(None, "price of the machine on spot, for cost estimates")
    on_demand_price_per_hour: PositiveFloat | None = argument(
        None, "price of the machine on demand, for cost and savings")

    _clients: Any = None

    @field_validator("zones")
    @classmethod
    def _zones(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give the zones to try in order, e.g. ['us-central1-a', 'us-central1-b'].")
        bad = [z for z in value if not ZONE_RE.match(z)]
        if bad:
            raise ValueError(f"{bad} are not zone names; give zones such as 'us-central1-a'.")
        if len(set(value)) != len(value):
            raise ValueError("it lists a zone twice; give each zone once.")
        return value

    @field_validator("machine_type")
    @classmethod
    def _machine(cls, value: str) -> str:
        if not value:
            raise ValueError("give the machine type, e.g. 'n1-standard-8'.")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("give the training command the VM runs, a shell string or a list of strings, "
                             "e.g. ['python3', '/opt/train.py'].")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str) -> str:
        if not SERVICE_ACCOUNT_RE.match(value):
            raise ValueError(
                "give the e-mail of a dedicated service account (name@project.iam.gserviceaccount.com); the "
                "Compute Engine default account ('default') holds the project-wide Editor role, too much for a "
                "training VM.")
        return value

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(check_env_names(value))

    @model_validator(mode="after")
    def _accelerators_and_common(self) -> ComputeEngineSpotBackend:
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError("accelerator_count is set but accelerator_type is not; give "
                             "accelerator_type='nvidia-tesla-t4' (for example).")
        gc.validate_common(project_id=self.project_id, emulator_host=self.emulator_host)
        return self

    def checkpoint_storage_options(self) -> dict[str, Any]:
        return dict(self.storage_options or {})

    def price_per_hour(self, handle: AttemptHandle | None, capacity: Capacity) -> float | None:
        return self.spot_price_per_hour if capacity is Capacity.SPOT else self.on_demand_price_per_hour

    # -- clients -------------------------------------------------------------------------
    def _connect(self) -> tuple[Any, Any, str]:
        """(InstancesClient, ZoneOperationsClient, project); blocking, made once per backend object."""
        if self._clients is None:
            from google.cloud import compute_v1

            credentials, conn_project = gc.credentials_and_project(
                self.gcp_conn_id, self.impersonation_chain, self.emulator_host)
            project = self.project_id or conn_project
            if not project:
                raise CloudActionRequired(
                    f"no project: give project_id= to the backend, or set the project in the "
                    f"{self.gcp_conn_id!r} connection.")
            options: dict[str, Any] = {"credentials": credentials, "transport": "rest"}
            if self.emulator_host:
                options["client_options"] = {"api_endpoint": self.emulator_host}
            self._clients = (compute_v1.InstancesClient(**options),
                             compute_v1.ZoneOperationsClient(**options), project)
        return self._clients

    # -- the instance --------------------------------------------------------------------
    def _instance(self, request: LaunchRequest, zone: str, project: str, rank: int = 0) -> Any:
        from google.cloud import compute_v1

        spot = request.capacity is Capacity.SPOT
        scheduling = compute_v1.Scheduling(
            provisioning_model="SPOT" if spot else "STANDARD",
            automatic_restart=False,
            on_host_maintenance="TERMINATE",
        )
        if spot:
            scheduling.instance_termination_action = "DELETE"
        command = self.command if isinstance(self.command, str) else shlex.join(self.command or [])
        if self.checkpoint_sync is not None:
            command = compute_engine_command(self.checkpoint_sync, command)
        rendezvous = f"{gc.attempt_name(NAME_PREFIX, request)}.{zone}.c.{project}.internal"  # rank 0's DNS name
        env = {**self.env, **request.node_contract(rank, rendezvous).to_env(), **secret_refs_env(self.secrets)}
        metadata = {
            **self.extra_metadata,
            "startup-script": self.startup_script or startup_script_template(),
            "spot-training-command": command,
            "spot-training-env": json.dumps(env, sort_keys=True),
            "spot-training-self-delete": "true",
        }
        interface = compute_v1.NetworkInterface(network=self.network or "global/networks/default")
        if self.subnetwork:
            interface.subnetwork = self.subnetwork
        if self.external_ip:
            interface.access_configs = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        labels = gc.resource_labels(request, self.labels)
        if request.num_nodes > 1:
            labels.update({"spot-training-node-rank": str(rank), "spot-training-num-nodes": str(request.num_nodes)})
        instance = compute_v1.Instance(
            name=_node_name(request, rank),
            machine_type=f"zones/{zone}/machineTypes/{self.machine_type}",
            scheduling=scheduling,
            labels=labels,
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key=k, value=v) for k, v in metadata.items()]),
            disks=[compute_v1.AttachedDisk(
                boot=True, auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=self.image, disk_size_gb=self.boot_disk_size_gb),
            )],
            network_interfaces=[interface],
            min_cpu_platform=self.min_cpu_platform,
        )
        instance.service_accounts = [compute_v1.ServiceAccount(
            email=self.service_account, scopes=["https://www.googleapis.com/auth/cloud-platform"])]
        if self.accelerator_type and self.accelerator_count:
            instance.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{self.accelerator_type}",
                accelerator_count=self.accelerator_count)]
        return instance

    def _handle(self, request: LaunchRequest, project: str, zone: str | None,
                tried: list[str]) -> ComputeEngineHandle:
        return ComputeEngineHandle(
            backend=self.kind, token=request.token, attempt=request.attempt, capacity=request.capacity.value,
            launched_at=time.time(), pool=zone, project=project, zone=zone,
            name=gc.attempt_name(NAME_PREFIX, request), result_uri=request.contract.result_uri,
            zones_tried=list(tried),
            node_names=[_node_name(request, rank) for rank in range(request.num_nodes)] if request.num_nodes > 1 else [],
        )

    def _typed(self, handle: AttemptHandle) -> ComputeEngineHandle:
        vm = self.load_handle(handle)
        assert isinstance(vm, ComputeEngineHandle)
        return vm

    def attempt_links(self, handle: AttemptHandle) -> list[AttemptLink]:
        vm = self._typed(handle)
        links = [AttemptLink("Logs", LOGS_CONSOLE.format(name=vm.name, project=vm.project))]
        if vm.zone:
            links.insert(0, AttemptLink("Compute Engine VM", INSTANCE_CONSOLE.format(
                zone=vm.zone, name=vm.name, project=vm.project)))
        return links

    def training_log(self, handle: AttemptHandle, lines: int = TAIL_LINES) -> TrainingLog | None:
        """The VM's last lines in Cloud Logging (the startup script's output, the training's included)."""
        vm = self._typed(handle)
        log_filter = f'resource.type="gce_instance" AND labels."compute.googleapis.com/resource_name"="{vm.name}"'
        return gc.training_log_tail(self, vm.project, log_filter, lines, f"Cloud Logging, VM {vm.name}")

    # -- worker side ---------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> ComputeEngineHandle:
        existing = self.find(request)
        if existing is not None:
            return existing
        instances, operations, project = self._connect()

        tried: list[str] = []
        pools: list[str] = []
        for zone in self._zones_first(request, project, in_order(self.zones, request.pool_order, str)):
            created: list[str] = []
            for rank in range(request.num_nodes):
                outcome = self._insert_node(request, project, zone, rank)
                if outcome != "created":
                    break
                created.append(_node_name(request, rank))
            if len(created) == request.num_nodes:
                return self._handle(request, project, zone, tried)
            for name in created:  # all or nothing: the part of the gang that was had is released
                self._delete(project, zone, name)
            tried.append(zone)
            gang = f" (node {len(created)} of {request.num_nodes}: the gang was released)" if created else ""
            pools.append(f"{self.machine_type}@{zone}: ZONE_RESOURCE_POOL_EXHAUSTED{gang}")
        what = "spot" if request.capacity is Capacity.SPOT else "on-demand"
        raise CapacityUnavailable(
            f"no {what} capacity for {self.machine_type} in any of {len(self.zones)} zone(s): {'; '.join(pools)}. "
            "More zones in zones=[...] widen the search.", pools_tried=pools, capacity=request.capacity,
            pools_without_capacity=list(tried))

    def capacity_ladder(self) -> list[str]:
        return list(self.zones)

    def pool_health_scope(self) -> str:
        # a zone out of one machine type may have plenty of another
        return f"{self.kind}:{self.project_id or self.gcp_conn_id}:{self.machine_type}"

    def pools_without_capacity(self, handle: AttemptHandle) -> list[str]:
        return list(self._typed(handle).zones_tried)

    def _insert_node(self, request: LaunchRequest, project: str, zone: str, rank: int) -> str:
        """Create node ``rank``'s VM in ``zone`` (idempotent): ``created``, or ``exhausted`` (no capacity)."""
        from google.cloud import compute_v1

        instances, operations, _ = self._connect()
        insert = compute_v1.InsertInstanceRequest(
            project=project, zone=zone, instance_resource=self._instance(request, zone, project, rank),
            request_id=gc.request_id(request.token + (f"-n{rank}" if rank else ""), zone),
        )
        try:
            operation = instances.insert_unary(request=insert, retry=gc.rate_limit_retry())
        except Exception as e:
            if _is_already_exists(e):
                self._existing(request, project, zone, [], insert.instance_resource.name)
                return "created"
            raise self._translate(e, f"creating VM {insert.instance_resource.name} in {zone}", project) from e
        operation = self._wait(operations, project, zone, operation)
        codes = [err.code for err in operation.error.errors]
        if not codes:
            return "created"
        if set(codes) & CAPACITY_ERROR_CODES:
            return "exhausted"
        raise self._operation_error(operation, project, zone)

    def _existing(self, request: LaunchRequest, project: str, zone: str, tried: list[str],
                  name: str | None = None) -> ComputeEngineHandle:
        """The insert hit a VM of the same name: ours (same token label) is re-attached, any other refused."""
        instances, _, _ = self._connect()
        name = name or gc.attempt_name(NAME_PREFIX, request)
        inst = self._get(instances, project, zone, name)
        if inst is not None and inst.labels.get("spot-training-token") == gc.label_value(request.token):
            return self._handle(request, project, zone, tried)
        raise CloudActionRequired(
            f"a VM named {name} already exists in {zone} but was not started for attempt token "
            f"{request.token}: another deployment shares this project and dag/run/task ids. Delete that VM, "
            "or set a distinct [spot_training] deployment_id in each deployment.")

    def _wait(self, operations: Any, project: str, zone: str, operation: Any) -> Any:
        from google.cloud import compute_v1

        deadline = time.monotonic() + float(self.operation_timeout)
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() >= deadline:
                raise CloudActionRequired(
                    f"the insert operation {operation.name} in {zone} did not finish within "
                    f"operation_timeout={self.operation_timeout:g} s; raise operation_timeout or check the "
                    "Compute Engine status page.")
            operation = operations.wait(project=project, zone=zone, operation=operation.name,
                                        retry=gc.rate_limit_retry())
        return operation

    def _operation_error(self, operation: Any, project: str, zone: str) -> CloudActionRequired:
        for err in operation.error.errors:
            if err.code in QUOTA_ERROR_CODES:
                info = next((d.quota_info for d in err.error_details if d.quota_info.limit_name), None)
                if info is not None:
                    return CloudActionRequired(gc.quota_message(
                        "Compute Engine", f"{info.limit_name} ({info.metric_name})",
                        dict(info.dimensions).get("region"), info.limit, project, err.message))
                return CloudActionRequired(gc.quota_message(
                    "Compute Engine", gc._quota_name(err.message) or "?", gc._region_in(err.message), None,
                    project, err.message))
        first = operation.error.errors[0]
        if "PERMISSION" in first.code or first.code == "FORBIDDEN":
            return CloudActionRequired(gc.permission_message(
                "Compute Engine", f"creating a VM in {zone}", first.message,
                "the connection's service account"))
        return CloudActionRequired(gc.invalid_argument_message(
            "Compute Engine", f"{first.code}: {first.message}", FIELD_TO_ARGUMENT))

    def _translate(self, e: Exception, action: str, project: str | None) -> Exception:
        return gc.translate_http_error(e, service="Compute Engine", action=action, project=project,
                                       field_to_argument=FIELD_TO_ARGUMENT)

    def find(self, request: LaunchRequest) -> ComputeEngineHandle | None:
        instances, _, project = self._connect()
        name = gc.attempt_name(NAME_PREFIX, request)
        for zone in self.zones:
            inst = self._get(instances, project, zone, name)
            if inst is not None and inst.labels.get("spot-training-token") == gc.label_value(request.token):
                if not self._whole_gang(request, project, zone):
                    return None  # part of a gang: launch() creates the rest idempotently, or releases it
                return self._handle(request, project, zone, [])
        result = self._read_result(request.contract.result_uri, request.token)
        if result is not None:  # it ran and deleted itself while no one watched
            return self._handle(request, project, result.get("zone"), [])
        return None

    def _zones_first(self, request: LaunchRequest, project: str, zones: list[str]) -> list[str]:
        """The zone ladder ``zones``; a zone holding part of this attempt's gang (a try died launching it) first.

        Its VMs are then kept (their insert answers "already exists" and is re-attached) and
        only the missing ranks are created, rather than a second gang in another zone.
        """
        if request.num_nodes == 1:
            return zones
        instances, _, _ = self._connect()
        token = gc.label_value(request.token)
        for zone in zones:
            for rank in range(request.num_nodes):
                vm = self._get(instances, project, zone, _node_name(request, rank))
                if vm is not None and vm.labels.get("spot-training-token") == token:
                    return [zone] + [z for z in zones if z != zone]
        return zones

    def _whole_gang(self, request: LaunchRequest, project: str, zone: str) -> bool:
        instances, _, _ = self._connect()
        return all(self._get(instances, project, zone, _node_name(request, rank)) is not None
                   for rank in range(1, request.num_nodes))

    def _get(self, instances: Any, project: str, zone: str, name: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            return instances.get(project=project, zone=zone, instance=name, retry=gc.rate_limit_retry())
        except gexc.NotFound:
            return None
        except Exception as e:
            raise self._translate(e, f"reading VM {name} in {zone}", project) from e

    def describe(self, handle: AttemptHandle) -> AttemptStatus:
        """The VM's (a gang: every VM's) attempt status; read-only (releasing ended VMs is :meth:`stop`'s job)."""
        return combine_gang([self._describe_vm(node) for node in self._typed(handle).nodes()])

    def _describe_vm(self, vm: ComputeEngineHandle) -> AttemptStatus:
        instances, operations, project = self._connect()
        result = self._read_result(vm.result_uri, vm.token)
        common: dict[str, Any] = {"started_at": vm.launched_at, "details": self._details(vm, result)}
        if result is not None and result.get("exit_code") == 0:
            return AttemptStatus(state=AttemptState.SUCCEEDED, reason="the training exited with code 0",
                                 ended_at=epoch_seconds(result.get("finished_at")), **common)
        inst = self._get(instances, project, vm.zone, vm.name) if vm.zone else None
        status = inst.status if inst is not None else "GONE"
        if status in _PENDING_STATUSES:
            return AttemptStatus(state=AttemptState.PENDING, reason=f"VM {vm.name} is {status}", **common)
        if status in _RUNNING_STATUSES:
            return AttemptStatus(state=AttemptState.RUNNING, reason=f"VM {vm.name} is RUNNING in {vm.zone}", **common)
        preemption = self._preemption(operations, vm) if vm.zone else None
        if preemption is not None:
            return AttemptStatus(state=AttemptState.PREEMPTED, reason=f"{PREEMPTED_OPERATION} ({preemption.name})",
                                 preemptions=1, ended_at=epoch_seconds(preemption.end_time or preemption.insert_time),
                                 **common)
        if result is not None:
            reason = result.get("malformed") or f"the training exited with code {result.get('exit_code')}"
            return AttemptStatus(state=AttemptState.FAILED, ended_at=epoch_seconds(result.get("finished_at")),
                                 reason=reason, **common)
        if inst is None:
            reason = (f"VM {vm.name} in {vm.zone} is gone with no result record and no {PREEMPTED_OPERATION} "
                      f"operation: it was deleted from outside, or the startup script could not write {vm.result_uri}")
        else:
            reason = f"VM {vm.name} is {status} with no result record (the guest shut down or crashed)"
        return AttemptStatus(state=AttemptState.FAILED, reason=reason, ended_at=time.time(), **common)

    def _details(self, handle: ComputeEngineHandle, result: dict[str, Any] | None) -> dict[str, Any]:
        details: dict[str, Any] = {"zone": handle.zone, "instance": handle.name, "zones_tried": handle.zones_tried}
        if result is not None:
            details["exit_code"] = result.get("exit_code")
        return details

    def _preemption(self, operations: Any, handle: ComputeEngineHandle) -> Any | None:
        target = f"/projects/{handle.project}/zones/{handle.zone}/instances/{handle.name}"
        try:
            pager = operations.list(request={
                "project": handle.project, "zone": handle.zone,
                "filter": f'operationType = "{PREEMPTED_OPERATION}"',
            }, retry=gc.rate_limit_retry())
            for op in pager:
                if op.operation_type == PREEMPTED_OPERATION and op.target_link.endswith(target):
                    return op
        except Exception as e:
            raise self._translate(e, f"listing operations in {handle.zone}", handle.project) from e
        return None

    def _read_result(self, uri: str | None, token: str) -> dict[str, Any] | None:
        """This attempt's result record; one left by another run at the same prefix is ignored."""
        if not uri:
            return None
        try:
            record = read_json_record(uri, **self.checkpoint_storage_options())
        except MalformedRecord as e:  # at this attempt's own path: it ended, and how is unknown
            return {"exit_code": None, "malformed": str(e), "token": token}
        if record is None or record.get("token") != token:
            return None
        return record

    def stop(self, handle: AttemptHandle) -> None:
        """Delete the VM, every VM of a gang (the startup script normally did); a missing VM is fine."""
        vm = self._typed(handle)
        if not vm.zone:
            return
        for node in vm.nodes():
            self._delete(vm.project, vm.zone, node.name)

    def _delete(self, project: str, zone: str, name: str) -> None:
        from google.api_core import exceptions as gexc

        instances, _, _ = self._connect()
        try:
            instances.delete_unary(project=project, zone=zone, instance=name, retry=gc.rate_limit_retry())
        except gexc.NotFound:
            pass
        except Exception as e:
            raise self._translate(e, f"deleting VM {name}", project) from e


def _node_name(request: LaunchRequest, rank: int) -> str:
    """The VM of node ``rank``: the attempt's name for rank 0, ``<name>-n<rank>`` for the others."""
    name = gc.attempt_name(NAME_PREFIX, request)
    return name if rank == 0 else f"{name}-n{rank}"


def _is_already_exists(e: Exception) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(e, gexc.Conflict)
