"""ComputeEngineSpotBackend gangs against the fake Compute Engine API: N VMs all or nothing, one preempted ends all."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from airflow_spot_training.backends.base import CapacityUnavailable
from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend
from airflow_spot_training.core.attempt import AttemptState
from tests.fakes.gce_server import GCEServer
from tests.fakes.launch import launch_request
from tests.unit.backends.test_compute_engine import SA, ZONES


@pytest.fixture
def server():
    with GCEServer() as s:
        yield s


@pytest.fixture
def backend(server):
    return ComputeEngineSpotBackend(zones=ZONES, machine_type="n1-standard-4", command=["python3", "/opt/train.py"],
                                    project_id="test-project", emulator_host=server.endpoint, service_account=SA)


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    return str(tmp_path / "ckpt")


def _gang_request(prefix: str, nodes: int):
    request = launch_request(prefix)
    return dataclasses.replace(request, contract=dataclasses.replace(request.contract, num_nodes=nodes))


def _env(instance: dict) -> dict:
    items = {item["key"]: item["value"] for item in instance["metadata"]["items"]}
    return json.loads(items["spot-training-env"])


class TestComputeEngineGang:
    def test_every_vm_of_the_gang_is_told_its_rank_and_rank_0s_name(self, server, backend, prefix):
        handle = backend.launch(_gang_request(prefix, 3))
        vms = sorted(server.fake.live_instances(), key=lambda i: i["name"])
        assert [vm["name"] for vm in vms] == [handle.name, f"{handle.name}-n1", f"{handle.name}-n2"]
        rendezvous = f"{handle.name}.{ZONES[0]}.c.test-project.internal"
        for rank, vm in enumerate(vms):
            env = _env(vm)
            assert (env["SPOT_TRAINING_NODE_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == (
                str(rank), "3", rendezvous)
            assert vm["labels"]["spot-training-node-rank"] == str(rank)
            assert env["SPOT_TRAINING_RESULT_URI"].endswith("attempt-1.json" if rank == 0 else
                                                            f"attempt-1.node-{rank}.json")
        assert len({r.query["requestId"] for r in server.fake.inserts()}) == 3

    def test_a_zone_that_holds_part_of_the_gang_is_released_and_the_next_zone_tried(self, server, backend, prefix):
        server.fake.zone_capacity[ZONES[0]] = 1  # room for one VM of two
        handle = backend.launch(_gang_request(prefix, 2))
        assert handle.zone == ZONES[1] and handle.zones_tried == [ZONES[0]]
        live = server.fake.live_instances()
        assert len(live) == 2 and all(ZONES[1] in vm["zone"] for vm in live)  # nothing left in the first zone

    def test_no_zone_holds_the_gang_is_no_capacity_with_nothing_left(self, server, backend, prefix):
        server.fake.zone_capacity.update({zone: 1 for zone in ZONES})
        with pytest.raises(CapacityUnavailable) as error:
            backend.launch(_gang_request(prefix, 2))
        assert error.value.pools_tried[0] == (f"n1-standard-4@{ZONES[0]}: ZONE_RESOURCE_POOL_EXHAUSTED "
                                              "(node 1 of 2: the gang was released)")
        assert server.fake.live_instances() == []

    def test_one_vm_preempted_ends_the_gang_as_one_preemption_and_stop_deletes_the_rest(self, server, backend,
                                                                                         prefix):
        handle = backend.launch(_gang_request(prefix, 3))
        assert backend.describe(handle).state is AttemptState.RUNNING
        server.fake.preempt(f"{handle.name}-n2")
        status = backend.describe(handle)
        assert (status.state, status.preemptions) == (AttemptState.PREEMPTED, 1)
        assert status.reason.startswith("node 2 of 3: compute.instances.preempted")
        backend.stop(handle)
        assert server.fake.live_instances() == []

    def test_the_gang_succeeds_when_every_node_wrote_exit_0(self, server, backend, prefix):
        request = _gang_request(prefix, 2)
        handle = backend.launch(request)
        for rank, name in enumerate([handle.name, f"{handle.name}-n1"]):
            path = Path(prefix) / "_results" / ("attempt-1.json" if rank == 0 else "attempt-1.node-1.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"exit_code": 0, "token": request.token, "finished_at": 1.0e9}))
            if rank == 0:
                assert backend.describe(handle).state is AttemptState.RUNNING  # the other node still trains
            server.fake.finish(name)
        assert backend.describe(handle).state is AttemptState.SUCCEEDED


def test_a_gang_cut_short_is_completed_in_its_zone(server, backend, prefix):
    """A try died right after creating rank 0 in the second zone: the retry creates rank 1 there, nothing else."""
    request = _gang_request(prefix, 2)
    backend._insert_node(request, "test-project", ZONES[1], 0)  # what the dying try had done
    handle = backend.launch(request)
    assert handle.zone == ZONES[1]
    live = server.fake.live_instances()
    assert sorted(vm["name"] for vm in live) == [handle.name, f"{handle.name}-n1"]
    assert all(ZONES[1] in vm["zone"] for vm in live)
