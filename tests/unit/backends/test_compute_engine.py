"""ComputeEngineSpotBackend against a fake Compute Engine REST API on loopback.

The real google-cloud-compute client sends real HTTP requests; only the cloud is fake.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from airflow_spot_training.backends import google_cloud as gc
from airflow_spot_training.backends.base import (
    BackendConfigError,
    CloudActionRequired,
    SpotBackend,
    CapacityUnavailable,
)
from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend, startup_script_template
from airflow_spot_training.core.policy import Capacity
from tests.fakes.gce_server import GCEServer
from tests.fakes.launch import launch_request

SA = "trainer@test-project.iam.gserviceaccount.com"

ZONES = ["us-central1-a", "us-central1-b", "us-central1-f"]


@pytest.fixture
def server():
    with GCEServer() as s:
        yield s


@pytest.fixture
def backend(server):
    return ComputeEngineSpotBackend(
        zones=ZONES, machine_type="n1-standard-4", command=["python3", "/opt/train.py", "--epochs", "3"],
        project_id="test-project", emulator_host=server.endpoint, labels={"team": "ml"},
        service_account=SA,
    )


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    return str(tmp_path / "ckpt")


def write_result(prefix: str, attempt: int, exit_code: int, zone: str = "us-central1-a",
                 token: str | None = None) -> None:
    """The record the startup script writes: it carries the attempt's token."""
    path = Path(prefix) / "_results" / f"attempt-{attempt}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    token = token or launch_request(prefix, attempt).token
    path.write_text(json.dumps({"exit_code": exit_code, "attempt": attempt, "zone": zone,
                                "finished_at": 1.0e9, "token": token}))


class TestComputeEngineSpotBackend:
    def test_launch_sends_a_spot_vm_with_labels_metadata_and_request_id(self, server, backend, prefix):
        request = launch_request(prefix)
        handle = backend.launch(request)

        (insert,) = server.fake.inserts()
        body = insert.body
        assert insert.path == "/compute/v1/projects/test-project/zones/us-central1-a/instances"
        assert insert.query["requestId"] == gc.request_id(request.token, "us-central1-a")
        uuid.UUID(insert.query["requestId"])  # a UUID, as the API requires
        assert body["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                      "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
        assert body["name"] == f"spot-{request.contract.run_key}-a1"
        assert body["machineType"] == "zones/us-central1-a/machineTypes/n1-standard-4"
        assert body["labels"]["airflow-dag-id"] == "gcp_dag"
        assert body["labels"]["airflow-task-id"] == "train"
        assert body["labels"]["spot-training-token"] == request.token
        assert body["labels"]["team"] == "ml"
        metadata = {i["key"]: i["value"] for i in body["metadata"]["items"]}
        assert metadata["startup-script"] == startup_script_template()
        assert metadata["spot-training-command"] == "python3 /opt/train.py --epochs 3"
        env = json.loads(metadata["spot-training-env"])
        assert env["SPOT_TRAINING_CHECKPOINT_URI"] == prefix
        assert env["SPOT_TRAINING_RESULT_URI"] == f"{prefix}/_results/attempt-1.json"
        assert handle.zone == "us-central1-a" and handle.pool == "us-central1-a"
        assert backend.describe(handle).state == "running"

    def test_on_demand_is_standard_without_termination_action(self, server, backend, prefix):
        backend.launch(launch_request(prefix, capacity=Capacity.ON_DEMAND))
        assert server.fake.inserts()[0].body["scheduling"] == {
            "provisioningModel": "STANDARD", "automaticRestart": False, "onHostMaintenance": "TERMINATE"}

    def test_min_cpu_platform_is_sent_when_given(self, server, backend, prefix):
        backend.model_copy(update={"min_cpu_platform": "Intel Ice Lake"}).launch(launch_request(prefix))
        backend.launch(launch_request(prefix, attempt=2))
        first, second = server.fake.inserts()
        assert first.body["minCpuPlatform"] == "Intel Ice Lake"
        assert "minCpuPlatform" not in second.body

    def test_success_from_the_result_record_and_stop_deletes_a_leftover_vm(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        write_result(prefix, 1, 0)
        status = backend.describe(handle)
        assert status.state == "succeeded"
        assert not server.fake.calls("DELETE", handle.name)  # describe only reads
        backend.stop(handle)  # what the operator does once the attempt has ended
        assert server.fake.live_instances() == []
        assert server.fake.calls("DELETE", handle.name)

    def test_a_result_record_of_another_run_is_ignored(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        write_result(prefix, 1, 0, token="someone-elses-run-a1")  # the same prefix, reused by another run
        assert backend.describe(handle).state == "running"
        server.fake.finish(handle.name)
        status = backend.describe(handle)
        assert status.state == "failed" and "no result record" in status.reason

    def test_nonzero_exit_is_a_failure_with_the_code(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        server.fake.finish(handle.name)
        write_result(prefix, 1, 3)
        status = backend.describe(handle)
        assert status.state == "failed" and "code 3" in status.reason

    def test_preemption_is_read_from_the_zone_operation(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        server.fake.preempt(handle.name)
        status = backend.describe(handle)
        assert status.state == "preempted" and status.preemptions == 1
        assert "compute.instances.preempted" in status.reason
        (listing,) = server.fake.calls("GET", "/zones/us-central1-a/operations")
        assert listing.query["filter"] == 'operationType = "compute.instances.preempted"'

    def test_vm_gone_without_record_or_preemption_is_a_failure_with_the_reason(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        server.fake.finish(handle.name)
        status = backend.describe(handle)
        assert status.state == "failed" and "no result record" in status.reason

    def test_zone_out_of_capacity_launches_in_the_next(self, server, backend, prefix):
        server.fake.exhausted_zones.add("us-central1-a")
        handle = backend.launch(launch_request(prefix))
        assert handle.zone == "us-central1-b"
        assert handle.zones_tried == ["us-central1-a"]
        assert [r.path.split("/")[6] for r in server.fake.inserts()] == ["us-central1-a", "us-central1-b"]
        assert len(server.fake.live_instances()) == 1

    def test_all_zones_out_of_capacity_is_spot_unavailable(self, server, backend, prefix):
        server.fake.exhausted_zones.update(ZONES)
        with pytest.raises(CapacityUnavailable) as err:
            backend.launch(launch_request(prefix))
        assert err.value.pools_tried == [f"n1-standard-4@{z}: ZONE_RESOURCE_POOL_EXHAUSTED" for z in ZONES]
        assert err.value.capacity is Capacity.SPOT
        assert server.fake.live_instances() == []

    def test_launch_again_with_the_same_token_reattaches(self, server, backend, prefix):
        request = launch_request(prefix)
        first = backend.launch(request)
        again = ComputeEngineSpotBackend(**backend.model_dump()).launch(request)
        assert (again.zone, again.name) == (first.zone, first.name)
        assert len(server.fake.inserts()) == 1
        assert len(server.fake.live_instances()) == 1

    def test_a_replayed_insert_is_the_same_operation(self, server, backend, prefix):
        """A worker dying between insert and saving the handle replays the same requestId."""
        from google.cloud import compute_v1

        request = launch_request(prefix)
        backend.launch(request)
        instances, _, _ = backend._connect()
        replay = compute_v1.InsertInstanceRequest(
            project="test-project", zone="us-central1-a",
            instance_resource=backend._instance(request, "us-central1-a", "test-project"),
            request_id=gc.request_id(request.token, "us-central1-a"))
        op = instances.insert_unary(request=replay)
        assert not op.error.errors
        assert len(server.fake.live_instances()) == 1

    def test_find_after_the_vm_deleted_itself_uses_the_result_record(self, server, backend, prefix):
        request = launch_request(prefix)
        handle = backend.launch(request)
        server.fake.finish(handle.name)
        write_result(prefix, 1, 0, zone="us-central1-a")
        found = backend.find(request)
        assert found is not None and backend.describe(found).state == "succeeded"

    def test_our_vm_is_reattached_after_the_request_id_expired(self, server, backend, prefix):
        request = launch_request(prefix)
        first = backend.launch(request)
        server.fake._request_ids.clear()
        # find() looks in the zones; an insert that hits our own VM (409) re-attaches as well
        again = ComputeEngineSpotBackend(**backend.model_dump())._existing(
            request, "test-project", "us-central1-a", [])
        assert again.name == first.name and len(server.fake.live_instances()) == 1

    def test_a_foreign_vm_with_the_same_name_is_refused(self, server, backend, prefix):
        request = launch_request(prefix)
        backend.launch(request)
        server.fake.instances[("us-central1-a", f"spot-{request.contract.run_key}-a1")]["labels"] = {}
        server.fake._request_ids.clear()  # request ids are remembered for a limited time only
        with pytest.raises(CloudActionRequired, match="already exists in us-central1-a"):
            ComputeEngineSpotBackend(**{**backend.model_dump(), "zones": ["us-central1-a"]}).launch(
                launch_request(prefix))

    def test_stop_deletes_the_vm(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        backend.stop(handle)
        backend.stop(handle)  # idempotent
        assert server.fake.live_instances() == []

    def test_poll_runs_in_a_thread_and_reports(self, server, backend, prefix):
        handle = backend.launch(launch_request(prefix))
        assert asyncio.run(backend.poll(handle)).state == "running"

    def test_quota_error_names_the_quota_and_region(self, server, backend, prefix):
        server.fake.quota_exceeded = {"metric": "compute.googleapis.com/preemptible_cpus",
                                      "limit_name": "PREEMPTIBLE-CPUS-per-project-region",
                                      "region": "us-central1"}
        with pytest.raises(CloudActionRequired) as err:
            backend.launch(launch_request(prefix))
        message = str(err.value)
        assert "PREEMPTIBLE-CPUS-per-project-region" in message
        assert "compute.googleapis.com/preemptible_cpus" in message
        assert "us-central1" in message and "iam-admin/quotas?project=test-project" in message

    def test_permission_error_names_the_permission_and_role(self, server, backend, prefix):
        server.fake.denied_permission = "compute.instances.create"
        with pytest.raises(CloudActionRequired) as err:
            backend.launch(launch_request(prefix))
        assert "compute.instances.create" in str(err.value)
        assert "roles/compute.instanceAdmin.v1" in str(err.value)

    def test_invalid_machine_type_names_the_argument(self, server, backend, prefix):
        bogus = ComputeEngineSpotBackend(**{**backend.model_dump(), "machine_type": "bogus"})
        with pytest.raises(CloudActionRequired) as err:
            bogus.launch(launch_request(prefix))
        assert "machine_type" in str(err.value) and "does not exist in zone" in str(err.value)
        assert server.fake.live_instances() == []

    def test_serialize_round_trip(self, backend):
        classpath, kwargs = backend.serialize()
        json.dumps(kwargs)
        rebuilt = SpotBackend.deserialize(classpath, kwargs)
        assert rebuilt.serialize() == (classpath, kwargs)

    def test_deepcopy_drops_clients(self, backend, prefix):
        import copy

        backend._connect()
        assert copy.deepcopy(backend)._clients is None

    @pytest.mark.parametrize(
        ("kwargs", "names"),
        [
            ({"zones": []}, "zones="),
            ({"zones": ["us-central1"]}, "zones"),
            ({"zones": ["us-central1-a", "us-central1-a"]}, "twice"),
            ({"machine_type": ""}, "machine_type"),
            ({"command": None}, "command"),
            ({"accelerator_count": 2}, "accelerator_type"),
            ({"project_id": "My Project"}, "project_id"),
            ({"emulator_host": "ftp://x"}, "emulator_host"),
            ({"service_account": "default"}, "service_account='default' is invalid: give the e-mail"),
            ({"env": {"X; rm -rf /": "1"}}, "are not environment variable names"),
        ],
    )
    def test_invalid_arguments_fail_at_parse_time_naming_the_argument(self, kwargs, names):
        base = {"zones": ZONES, "machine_type": "n1-standard-4", "command": "python3 train.py",
                "service_account": SA}
        with pytest.raises(BackendConfigError, match=names):
            ComputeEngineSpotBackend(**{**base, **kwargs})
