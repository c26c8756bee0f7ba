"""VertexAISpotBackend against a fake Vertex AI JobService on a loopback gRPC port.

The real JobServiceClient (sync) and JobServiceAsyncClient (gRPC asyncio) are used;
only the service is fake.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from airflow_spot_training.backends.base import BackendConfigError, CloudActionRequired, SpotBackend
from airflow_spot_training.backends.vertex_ai import VertexAISpotBackend, base_output_directory
from airflow_spot_training.core.policy import Capacity
from tests.fakes.launch import launch_request
from tests.fakes.vertex_server import VertexServer

PREFIX = "gs://bucket/runs/r1/checkpoints"


@pytest.fixture
def server():
    with VertexServer() as s:
        yield s


@pytest.fixture
def backend(server):
    return VertexAISpotBackend(
        region="us-central1", machine_type="n1-standard-8", image_uri="us-docker.pkg.dev/p/train/t:1",
        args=["--epochs", "3"], accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1,
        project_id="test-project", emulator_host=server.endpoint, env={"WANDB_MODE": "offline"},
    )


class TestVertexAISpotBackend:
    def test_launch_creates_a_spot_job_whose_checkpoint_dir_is_the_prefix(self, server, backend):
        request = launch_request(PREFIX)
        handle = backend.launch(request)

        (create,) = server.fake.calls("CreateCustomJob")
        job = create.custom_job
        assert create.parent == "projects/test-project/locations/us-central1"
        assert job.display_name == f"spot-training-{request.contract.run_key}-a1"
        assert job.job_spec.scheduling.strategy.name == "SPOT"
        # Vertex sets AIP_CHECKPOINT_DIR = <base_output_directory>/checkpoints/
        assert job.job_spec.base_output_directory.output_uri_prefix + "/checkpoints" == PREFIX
        env = {e.name: e.value for e in job.job_spec.worker_pool_specs[0].container_spec.env}
        assert env["SPOT_TRAINING_CHECKPOINT_URI"] == PREFIX and env["WANDB_MODE"] == "offline"
        assert job.job_spec.worker_pool_specs[0].machine_spec.accelerator_count == 1
        assert job.labels["spot-training-token"] == request.token
        assert job.labels["airflow-task-id"] == "train"
        assert handle.name == server.fake.by_display_name(job.display_name).name

    def test_on_demand_is_standard(self, server, backend):
        backend.launch(launch_request(PREFIX, attempt=2, capacity=Capacity.ON_DEMAND))
        assert server.fake.calls("CreateCustomJob")[0].custom_job.job_spec.scheduling.strategy.name == "STANDARD"

    def test_a_prefix_not_ending_in_checkpoints_is_refused_with_the_fix(self, server, backend):
        with pytest.raises(CloudActionRequired, match="must end in '/checkpoints'"):
            backend.launch(launch_request("gs://bucket/runs/r1"))
        assert server.fake.calls("CreateCustomJob") == []

    def test_launch_again_with_the_same_token_reattaches(self, server, backend):
        request = launch_request(PREFIX)
        first = backend.launch(request)
        again = VertexAISpotBackend(**backend.model_dump()).launch(request)
        assert again.name == first.name
        assert len(server.fake.calls("CreateCustomJob")) == 1
        assert server.fake.calls("ListCustomJobs")[-1].filter == f'labels.spot-training-token="{request.token}"'

    @pytest.mark.parametrize(
        ("act", "state", "preemptions"),
        [
            (lambda f, n: None, "pending", 0),
            (lambda f, n: f.start(n), "running", 0),
            (lambda f, n: (f.start(n), f.succeed(n)), "succeeded", 0),
            (lambda f, n: (f.start(n), f.preempt(n)), "preempted", 1),
            (lambda f, n: (f.start(n), f.fail(n, 8, "stockout")), "preempted", 1),
            (lambda f, n: f.fail(n, 8, "stockout before start"), "capacity_unavailable", 0),
            (lambda f, n: (f.start(n), f.fail(n, 3, "The replica workerpool0-0 exited with a non-zero status of 1")),
             "failed", 0),
        ],
    )
    def test_states_sync_and_async(self, server, backend, act, state, preemptions):
        handle = backend.launch(launch_request(PREFIX))
        act(server.fake, handle.name)
        status = backend.describe(handle)
        assert (status.state, status.preemptions) == (state, preemptions)
        polled = asyncio.run(VertexAISpotBackend(**backend.model_dump()).poll(handle))
        assert (polled.state, polled.preemptions) == (state, preemptions)

    def test_a_failed_standard_job_is_a_failure_not_a_preemption(self, server, backend):
        handle = backend.launch(launch_request(PREFIX, capacity=Capacity.ON_DEMAND))
        server.fake.start(handle.name)
        server.fake.fail(handle.name, 14, "worker lost")
        status = backend.describe(handle)
        assert status.state == "failed" and "worker lost" in status.reason

    def test_a_spot_job_stuck_pending_is_reported_unavailable_and_stop_cancels_it(self, server, backend):
        stuck = VertexAISpotBackend(**{**backend.model_dump(), "max_pending_seconds": 0.001})
        handle = stuck.launch(launch_request(PREFIX))
        status = asyncio.run(stuck.poll(handle))
        assert status.state == "capacity_unavailable" and "max_pending_seconds" in status.reason
        assert stuck.describe(handle).state == "capacity_unavailable"
        assert server.fake.calls("CancelCustomJob") == []  # reading the status changes nothing
        stuck.stop(handle)  # what the operator does once the attempt has ended
        assert [c.name for c in server.fake.calls("CancelCustomJob")] == [handle.name]
        assert server.fake.jobs[handle.name].state.name == "JOB_STATE_CANCELLED"

    def test_stop_and_astop_cancel_and_are_idempotent(self, server, backend):
        handle = backend.launch(launch_request(PREFIX))
        backend.stop(handle)
        asyncio.run(backend.astop(handle))  # already cancelled: no error
        assert server.fake.jobs[handle.name].state.name == "JOB_STATE_CANCELLED"

    def test_quota_error_names_the_quota(self, server, backend):
        server.fake.create_error = (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "The following quota metrics exceed quota limits: "
            "aiplatform.googleapis.com/custom_model_training_preemptible_nvidia_t4_gpus")
        with pytest.raises(CloudActionRequired) as err:
            backend.launch(launch_request(PREFIX))
        assert "aiplatform.googleapis.com/custom_model_training_preemptible_nvidia_t4_gpus" in str(err.value)
        assert "iam-admin/quotas?project=test-project" in str(err.value)

    def test_permission_error_names_the_permission_and_role(self, server, backend):
        server.fake.create_error = (
            grpc.StatusCode.PERMISSION_DENIED,
            "Permission 'aiplatform.customJobs.create' denied on resource "
            "'//aiplatform.googleapis.com/projects/test-project/locations/us-central1' (or it may not exist).")
        with pytest.raises(CloudActionRequired) as err:
            backend.launch(launch_request(PREFIX))
        assert "aiplatform.customJobs.create" in str(err.value) and "roles/aiplatform.user" in str(err.value)

    def test_invalid_argument_names_the_backend_argument(self, server, backend):
        server.fake.create_error = (grpc.StatusCode.INVALID_ARGUMENT,
                                    "Machine type \"n1-standard-8\" is not supported with accelerator.")
        with pytest.raises(CloudActionRequired, match="machine_type"):
            backend.launch(launch_request(PREFIX))

    def test_serialize_round_trip(self, backend):
        classpath, kwargs = backend.serialize()
        json.dumps(kwargs)
        assert SpotBackend.deserialize(classpath, kwargs).serialize() == (classpath, kwargs)

    def test_worker_pool_specs_get_the_contract(self, server):
        backend = VertexAISpotBackend(
            region="us-central1", project_id="test-project", emulator_host=server.endpoint,
            worker_pool_specs=[{"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 2,
                                "container_spec": {"image_uri": "img"}}])
        backend.launch(launch_request(PREFIX))
        spec = server.fake.calls("CreateCustomJob")[0].custom_job.job_spec.worker_pool_specs[0]
        assert spec.replica_count == 2
        assert "SPOT_TRAINING_CHECKPOINT_URI" in {e.name for e in spec.container_spec.env}

    def test_base_output_directory(self):
        assert base_output_directory("gs://b/x/checkpoints/") == "gs://b/x"

    @pytest.mark.parametrize(
        ("kwargs", "names"),
        [
            ({"region": None}, "region="),
            ({"region": "us-central1-a"}, "region"),
            ({"machine_type": None}, "machine_type"),
            ({"image_uri": None}, "image_uri"),
            ({"worker_pool_specs": [{"machine_spec": {}}]}, "either worker_pool_specs"),
            ({"machine_type": None, "image_uri": None, "worker_pool_specs": [{"bogus": 1}]}, r"worker_pool_specs\[0\]"),
            ({"accelerator_count": 1}, "accelerator_type"),
            ({"max_pending_seconds": -1}, "max_pending_seconds"),
        ],
    )
    def test_invalid_arguments_fail_at_parse_time_naming_the_argument(self, kwargs, names):
        base = {"region": "us-central1", "machine_type": "n1-standard-4", "image_uri": "img"}
        with pytest.raises(BackendConfigError, match=names):
            VertexAISpotBackend(**{**base, **kwargs})


class TestVertexAIGang:
    def test_a_gang_is_a_primary_replica_and_num_nodes_minus_one_workers(self, server, backend):
        import dataclasses

        request = launch_request(PREFIX)
        request = dataclasses.replace(request, contract=dataclasses.replace(request.contract, num_nodes=4))
        backend.launch(request)
        pools = server.fake.calls("CreateCustomJob")[0].custom_job.job_spec.worker_pool_specs
        assert [pool.replica_count for pool in pools] == [1, 3]
        assert pools[0].machine_spec == pools[1].machine_spec and pools[0].container_spec == pools[1].container_spec
        env = {e.name: e.value for e in pools[1].container_spec.env}
        # Vertex places the replicas: each finds its rank in CLUSTER_SPEC (runtime.read_contract)
        assert env["SPOT_TRAINING_NUM_NODES"] == "4" and "SPOT_TRAINING_NODE_RANK" not in env

    def test_replicas_are_counted_once(self, server):
        from airflow_spot_training.operators.spot_training import (
            SpotTrainingConfigError,
            SpotTrainingOperator,
        )

        backend = VertexAISpotBackend(region="us-central1", machine_type="n1-standard-8", replica_count=2,
                                      image_uri="us-docker.pkg.dev/p/train/t:1", project_id="test-project")
        with pytest.raises(SpotTrainingConfigError, match="replica_count=2 and the operator's num_nodes=2"):
            SpotTrainingOperator(task_id="t", backend=backend, checkpoint_prefix=PREFIX, num_nodes=2)
