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

The google-cloud-compute library has no async client, so the triggerer polls
through :meth:`describe` in a thread (the base class's :meth:`poll`).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from importlib import resources
from typing import Any

from airflow_spot_training.backends import google_cloud as gc
from airflow_spot_training.backends.base import (
    FAILED,
    PENDING,
    PREEMPTED,
    RUNNING,
    SUCCEEDED,
    AttemptStatus,
    BackendConfigError,
    CloudActionRequired,
    LaunchRequest,
    SpotBackend,
    SpotCapacityUnavailable,
)
from airflow_spot_training.core.policy import Capacity
from airflow_spot_training.runtime.results import read_json_record

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


def startup_script_template() -> str:
    """The documented startup script every VM runs (see ``bootstrap/gce_startup_script.sh``)."""
    return (resources.files("airflow_spot_training") / "bootstrap" / STARTUP_SCRIPT).read_text()


class ComputeEngineSpotBackend(SpotBackend):
    """Run each attempt on its own Compute Engine VM: spot first, standard after escalation.

    :param zones: the zone ladder, tried in order for every launch, e.g.
        ``["us-central1-a", "us-central1-b"]``.
    :param machine_type: the machine type, e.g. ``"n1-standard-8"``.
    :param command: the training command run on the VM (a shell string or an argument list).
    :param project_id: the project; default: the project of the connection.
    :param image: the boot image (a family or image URL).
    :param boot_disk_size_gb: size of the boot disk.
    :param accelerator_type: GPU type, e.g. ``"nvidia-tesla-t4"``; ``None`` for none.
    :param accelerator_count: how many GPUs.
    :param network: the VPC network (default ``global/networks/default``).
    :param subnetwork: the subnetwork, when the network has custom subnets.
    :param external_ip: give the VM an ephemeral external IP (needed without Cloud NAT).
    :param service_account: the VM's service account e-mail (``"default"``: the
        Compute Engine default service account).
    :param env: extra environment variables for the training (the contract is added).
    :param labels: extra labels for the VM.
    :param extra_metadata: extra instance metadata items.
    :param startup_script: replaces the packaged startup script; it must honour the same contract.
    :param operation_timeout: seconds launch waits for an insert operation in each zone.
    :param gcp_conn_id: the Airflow connection with the credentials.
    :param impersonation_chain: a service account to impersonate (or a chain), as in the
        Google provider's operators.
    :param emulator_host: base URL of an emulator of the Compute Engine API
        (``http://127.0.0.1:PORT``); no credentials are used. For tests.
    :param storage_options: gcsfs options for reading the checkpoint prefix and result
        records (default: Application Default Credentials).
    :param spot_price_per_hour: price of the machine on spot, for cost estimates.
    :param on_demand_price_per_hour: price of the machine on demand, for cost and savings.
    """

    kind = "compute_engine"
    default_restart_overhead = 120.0

    def __init__(
        self,
        *,
        zones: list[str] | None = None,
        machine_type: str | None = None,
        command: str | list[str] | None = None,
        project_id: str | None = None,
        image: str = DEFAULT_IMAGE,
        boot_disk_size_gb: int = 50,
        accelerator_type: str | None = None,
        accelerator_count: int = 0,
        network: str | None = None,
        subnetwork: str | None = None,
        external_ip: bool = True,
        service_account: str | None = "default",
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        extra_metadata: dict[str, str] | None = None,
        startup_script: str | None = None,
        operation_timeout: float = 120.0,
        gcp_conn_id: str = gc.DEFAULT_CONN_ID,
        impersonation_chain: str | list[str] | None = None,
        emulator_host: str | None = None,
        storage_options: dict[str, Any] | None = None,
        spot_price_per_hour: float | None = None,
        on_demand_price_per_hour: float | None = None,
    ) -> None:
        self.zones = list(zones) if zones is not None else []
        self.machine_type = machine_type
        self.command = command if isinstance(command, str) or command is None else list(command)
        self.project_id = project_id
        self.image = image
        self.boot_disk_size_gb = boot_disk_size_gb
        self.accelerator_type = accelerator_type
        self.accelerator_count = accelerator_count
        self.network = network
        self.subnetwork = subnetwork
        self.external_ip = external_ip
        self.service_account = service_account
        self.env = dict(env or {})
        self.labels = dict(labels or {})
        self.extra_metadata = dict(extra_metadata or {})
        self.startup_script = startup_script
        self.operation_timeout = operation_timeout
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self.emulator_host = emulator_host
        self._storage_options = storage_options
        self.spot_price_per_hour = spot_price_per_hour
        self.on_demand_price_per_hour = on_demand_price_per_hour
        self._clients: tuple[Any, Any, str] | None = None
        self.validate()

    def __getstate__(self) -> dict[str, Any]:
        # clients hold sessions and credentials: never copy or pickle them with the DAG
        return {**self.__dict__, "_clients": None}

    # -- configuration -------------------------------------------------------------------
    def serialize_kwargs(self) -> dict[str, Any]:
        return {
            "zones": self.zones,
            "machine_type": self.machine_type,
            "command": self.command,
            "project_id": self.project_id,
            "image": self.image,
            "boot_disk_size_gb": self.boot_disk_size_gb,
            "accelerator_type": self.accelerator_type,
            "accelerator_count": self.accelerator_count,
            "network": self.network,
            "subnetwork": self.subnetwork,
            "external_ip": self.external_ip,
            "service_account": self.service_account,
            "env": self.env,
            "labels": self.labels,
            "extra_metadata": self.extra_metadata,
            "startup_script": self.startup_script,
            "operation_timeout": self.operation_timeout,
            "gcp_conn_id": self.gcp_conn_id,
            "impersonation_chain": self.impersonation_chain,
            "emulator_host": self.emulator_host,
            "storage_options": self._storage_options,
            "spot_price_per_hour": self.spot_price_per_hour,
            "on_demand_price_per_hour": self.on_demand_price_per_hour,
        }

    def validate(self) -> None:
        if not self.zones or not all(isinstance(z, str) for z in self.zones):
            raise BackendConfigError(
                "ComputeEngineSpotBackend needs zones=[...]: the zones to try in order, e.g. "
                "['us-central1-a', 'us-central1-b', 'us-central1-f']."
            )
        bad = [z for z in self.zones if not ZONE_RE.match(z)]
        if bad:
            raise BackendConfigError(f"zones: {bad} are not zone names; give zones such as 'us-central1-a'.")
        if len(set(self.zones)) != len(self.zones):
            raise BackendConfigError(f"zones={self.zones} lists a zone twice; give each zone once.")
        if not isinstance(self.machine_type, str) or not self.machine_type:
            raise BackendConfigError(
                "ComputeEngineSpotBackend needs machine_type='...', e.g. 'n1-standard-8'.")
        command_ok = isinstance(self.command, str) or (
            isinstance(self.command, list) and all(isinstance(a, str) for a in self.command))
        if not self.command or not command_ok:
            raise BackendConfigError(
                "ComputeEngineSpotBackend needs command=...: the training command the VM runs, "
                "a shell string or a list of strings, e.g. ['python3', '/opt/train.py']."
            )
        if not isinstance(self.accelerator_count, int) or self.accelerator_count < 0:
            raise BackendConfigError(
                f"accelerator_count={self.accelerator_count!r} must be 0 or a positive integer.")
        if self.accelerator_count and not self.accelerator_type:
            raise BackendConfigError("accelerator_count is set but accelerator_type is not; give "
                                     "accelerator_type='nvidia-tesla-t4' (for example).")
        if not isinstance(self.boot_disk_size_gb, int) or self.boot_disk_size_gb < 10:
            raise BackendConfigError(
                f"boot_disk_size_gb={self.boot_disk_size_gb!r} must be an integer of 10 or more.")
        if not isinstance(self.operation_timeout, (int, float)) or self.operation_timeout <= 0:
            raise BackendConfigError(
                f"operation_timeout={self.operation_timeout!r} must be a positive number of seconds.")
        mappings = (("env", self.env), ("labels", self.labels), ("extra_metadata", self.extra_metadata))
        for name, value in mappings:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise BackendConfigError(f"{name} must map strings to strings.")
        gc.validate_common(project_id=self.project_id, gcp_conn_id=self.gcp_conn_id,
                           emulator_host=self.emulator_host, storage_options=self._storage_options)

    def storage_options(self) -> dict[str, Any]:
        return dict(self._storage_options or {})

    def price_per_hour(self, handle: dict[str, Any], capacity: Capacity) -> float | None:
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
    def _instance(self, request: LaunchRequest, zone: str, project: str) -> Any:
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
        env = {**self.env, **request.contract.to_env()}
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
        instance = compute_v1.Instance(
            name=gc.attempt_name(NAME_PREFIX, request),
            machine_type=f"zones/{zone}/machineTypes/{self.machine_type}",
            scheduling=scheduling,
            labels=gc.resource_labels(request, self.labels),
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key=k, value=v) for k, v in metadata.items()]),
            disks=[compute_v1.AttachedDisk(
                boot=True, auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=self.image, disk_size_gb=self.boot_disk_size_gb),
            )],
            network_interfaces=[interface],
        )
        if self.service_account:
            email = "default" if self.service_account == "default" else self.service_account
            instance.service_accounts = [compute_v1.ServiceAccount(
                email=email, scopes=["https://www.googleapis.com/auth/cloud-platform"])]
        if self.accelerator_type and self.accelerator_count:
            instance.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{self.accelerator_type}",
                accelerator_count=self.accelerator_count)]
        return instance

    def _handle(self, request: LaunchRequest, project: str, zone: str | None,
                tried: list[str]) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "project": project,
            "zone": zone,
            "name": gc.attempt_name(NAME_PREFIX, request),
            "token": request.token,
            "attempt": request.attempt,
            "capacity": request.capacity.value,
            "pool": zone,
            "result_uri": request.contract.result_uri,
            "launched_at": time.time(),
            "zones_tried": tried,
        }

    # -- worker side ---------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        existing = self.find(request)
        if existing is not None:
            return existing
        instances, operations, project = self._connect()
        from google.cloud import compute_v1

        tried: list[str] = []
        for zone in self.zones:
            insert = compute_v1.InsertInstanceRequest(
                project=project, zone=zone, instance_resource=self._instance(request, zone, project),
                request_id=gc.request_id(request.token, zone),
            )
            try:
                operation = instances.insert_unary(request=insert)
            except Exception as e:
                if _is_already_exists(e):
                    return self._existing(request, project, zone, tried)
                action = f"creating VM {insert.instance_resource.name} in {zone}"
                raise self._translate(e, action, project) from e
            operation = self._wait(operations, project, zone, operation)
            codes = [err.code for err in operation.error.errors]
            if not codes:
                return self._handle(request, project, zone, tried)
            if set(codes) & CAPACITY_ERROR_CODES:
                tried.append(zone)
                continue
            raise self._operation_error(operation, project, zone)
        what = "spot" if request.capacity is Capacity.SPOT else "on-demand"
        raise SpotCapacityUnavailable(
            f"no {what} capacity for {self.machine_type} in zones {', '.join(tried)} "
            "(ZONE_RESOURCE_POOL_EXHAUSTED)", pools_tried=tried)

    def _existing(self, request: LaunchRequest, project: str, zone: str, tried: list[str]) -> dict[str, Any]:
        """The insert hit a VM of the same name: ours (same token label) is re-attached, any other refused."""
        instances, _, _ = self._connect()
        name = gc.attempt_name(NAME_PREFIX, request)
        inst = self._get(instances, project, zone, name)
        if inst is not None and inst.labels.get("spot-training-token") == gc.label_value(request.token):
            return self._handle(request, project, zone, tried)
        raise CloudActionRequired(
            f"a VM named {name} already exists in {zone} but was not started for attempt token "
            f"{request.token}: another deployment shares this project and dag/run/task ids. Delete that VM, "
            "or use another project_id.")

    def _wait(self, operations: Any, project: str, zone: str, operation: Any) -> Any:
        from google.cloud import compute_v1

        deadline = time.monotonic() + float(self.operation_timeout)
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() >= deadline:
                raise CloudActionRequired(
                    f"the insert operation {operation.name} in {zone} did not finish within "
                    f"operation_timeout={self.operation_timeout:g} s; raise operation_timeout or check the "
                    "Compute Engine status page.")
            operation = operations.wait(project=project, zone=zone, operation=operation.name)
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

    def find(self, request: LaunchRequest) -> dict[str, Any] | None:
        instances, _, project = self._connect()
        name = gc.attempt_name(NAME_PREFIX, request)
        for zone in self.zones:
            inst = self._get(instances, project, zone, name)
            if inst is not None and inst.labels.get("spot-training-token") == gc.label_value(request.token):
                return self._handle(request, project, zone, [])
        result = self._read_result(request.contract.result_uri)
        if result is not None:  # it ran and deleted itself while no one watched
            return self._handle(request, project, result.get("zone"), [])
        return None

    def _get(self, instances: Any, project: str, zone: str, name: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            return instances.get(project=project, zone=zone, instance=name)
        except gexc.NotFound:
            return None
        except Exception as e:
            raise self._translate(e, f"reading VM {name} in {zone}", project) from e

    def describe(self, handle: dict[str, Any]) -> AttemptStatus:
        instances, operations, project = self._connect()
        result = self._read_result(handle["result_uri"])
        if result is not None and result.get("exit_code") == 0:
            self._delete_if_present(handle)
            return AttemptStatus(state=SUCCEEDED, reason="the training exited with code 0",
                                 started_at=handle.get("launched_at"), ended_at=result.get("finished_at"),
                                 details=self._details(handle, result))
        zone, name = handle.get("zone"), handle["name"]
        inst = self._get(instances, project, zone, name) if zone else None
        status = inst.status if inst is not None else "GONE"
        if status in _PENDING_STATUSES:
            return AttemptStatus(state=PENDING, reason=f"VM {name} is {status}",
                                 started_at=handle.get("launched_at"))
        if status in _RUNNING_STATUSES:
            return AttemptStatus(state=RUNNING, reason=f"VM {name} is RUNNING in {zone}",
                                 started_at=handle.get("launched_at"), details=self._details(handle, None))
        preemption = self._preemption(operations, handle) if zone else None
        if preemption is not None:
            self._delete_if_present(handle)
            return AttemptStatus(state=PREEMPTED, reason=f"{PREEMPTED_OPERATION} ({preemption.name})",
                                 preemptions=1, started_at=handle.get("launched_at"),
                                 ended_at=_epoch(preemption.end_time or preemption.insert_time),
                                 details=self._details(handle, None))
        if result is not None:
            self._delete_if_present(handle)
            return AttemptStatus(state=FAILED,
                                 reason=f"the training exited with code {result.get('exit_code')}",
                                 started_at=handle.get("launched_at"), ended_at=result.get("finished_at"),
                                 details=self._details(handle, result))
        if inst is None:
            reason = (f"VM {name} in {zone} is gone with no result record and no {PREEMPTED_OPERATION} "
                      "operation: it was deleted from outside, or the startup script could not write "
                      f"{handle['result_uri']}")
        else:
            self._delete_if_present(handle)
            reason = f"VM {name} is {status} with no result record (the guest shut down or crashed)"
        return AttemptStatus(state=FAILED, reason=reason, started_at=handle.get("launched_at"),
                             ended_at=time.time(), details=self._details(handle, None))

    def _details(self, handle: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
        details = {"zone": handle.get("zone"), "instance": handle["name"],
                   "zones_tried": handle.get("zones_tried", [])}
        if result is not None:
            details["exit_code"] = result.get("exit_code")
        return details

    def _preemption(self, operations: Any, handle: dict[str, Any]) -> Any | None:
        project, zone, name = handle["project"], handle["zone"], handle["name"]
        target = f"/projects/{project}/zones/{zone}/instances/{name}"
        try:
            pager = operations.list(request={
                "project": project, "zone": zone,
                "filter": f'operationType = "{PREEMPTED_OPERATION}"',
            })
            for op in pager:
                if op.operation_type == PREEMPTED_OPERATION and op.target_link.endswith(target):
                    return op
        except Exception as e:
            raise self._translate(e, f"listing operations in {zone}", project) from e
        return None

    def _read_result(self, uri: str | None) -> dict[str, Any] | None:
        if not uri:
            return None
        try:
            return read_json_record(uri, **self.storage_options())
        except ValueError:
            return {"exit_code": None, "unreadable": True}

    def _delete_if_present(self, handle: dict[str, Any]) -> None:
        """Delete the VM (the startup script normally did); a missing VM is fine."""
        from google.api_core import exceptions as gexc

        if not handle.get("zone"):
            return
        instances, _, project = self._connect()
        try:
            instances.delete_unary(project=project, zone=handle["zone"], instance=handle["name"])
        except gexc.NotFound:
            pass

    def stop(self, handle: dict[str, Any]) -> None:
        try:
            self._delete_if_present(handle)
        except Exception as e:
            raise self._translate(e, f"deleting VM {handle['name']}", handle.get("project")) from e


def _is_already_exists(e: Exception) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(e, gexc.Conflict)


def _epoch(rfc3339: str | None) -> float | None:
    if not rfc3339:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
