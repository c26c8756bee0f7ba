"""Shared GCP plumbing: credentials from the Airflow connection, labels, request ids, error messages."""

from __future__ import annotations

import asyncio
import json

import pytest
from google.api_core import exceptions as gexc

from airflow_spot_training.backends import google_cloud as gc
from airflow_spot_training.backends.base import CloudActionRequired
from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend
from airflow_spot_training.backends.vertex_ai import VertexAISpotBackend


@pytest.fixture
def anonymous_connection(monkeypatch):
    """A google_cloud_default connection that needs no key (the provider's is_anonymous extra)."""
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"project": "conn-project", "is_anonymous": True}}))


SA = "trainer@test-project.iam.gserviceaccount.com"

class TestCredentials:
    def test_backends_take_the_project_and_credentials_from_the_connection(self, anonymous_connection):
        from google.auth.credentials import AnonymousCredentials

        instances, _, project = ComputeEngineSpotBackend(
            zones=["us-central1-a"], machine_type="e2-small", command="true",
            service_account=SA)._connect()
        assert project == "conn-project"
        assert isinstance(instances._transport._credentials, AnonymousCredentials)
        assert instances._transport._host == "https://compute.googleapis.com"

        vertex = VertexAISpotBackend(region="europe-west4", machine_type="n1-standard-4", image_uri="img")
        client, project = vertex._connect()
        assert project == "conn-project"
        assert client._transport._host == "europe-west4-aiplatform.googleapis.com:443"

        async def connect_async():
            return await vertex._aconnect()

        client, project = asyncio.run(connect_async())
        assert project == "conn-project"

    def test_project_id_argument_wins(self, anonymous_connection):
        backend = ComputeEngineSpotBackend(zones=["us-central1-a"], machine_type="e2-small", command="true",
                                           project_id="my-project", service_account=SA)
        assert backend._connect()[2] == "my-project"


class TestNames:
    def test_label_values_are_valid(self):
        assert gc.label_value("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01t00_00_00_00_00"
        assert len(gc.label_value("x" * 100)) == 63

    def test_request_ids_are_deterministic_uuids(self):
        assert gc.request_id("abc-a1", "us-central1-a") == gc.request_id("abc-a1", "us-central1-a")
        assert gc.request_id("abc-a1", "us-central1-a") != gc.request_id("abc-a1", "us-central1-b")
        assert gc.request_id("abc-a1", "z") != gc.request_id("abc-a2", "z")


class TestErrors:
    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (gexc.Forbidden("Required 'compute.instances.create' permission for 'projects/p'"),
             ["compute.instances.create", "roles/compute.instanceAdmin.v1"]),
            (gexc.Forbidden("Required 'iam.serviceAccounts.actAs' permission for 'projects/p/sa'"),
             ["iam.serviceAccounts.actAs", "roles/iam.serviceAccountUser"]),
            (gexc.PermissionDenied("Permission 'aiplatform.customJobs.create' denied on resource"),
             ["aiplatform.customJobs.create", "roles/aiplatform.user"]),
            (gexc.Forbidden("Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."),
             ["GPUS_ALL_REGIONS", "iam-admin/quotas?project=p"]),
            (gexc.TooManyRequests("quota metric aiplatform.googleapis.com/custom_model_training_cpus"),
             ["aiplatform.googleapis.com/custom_model_training_cpus"]),
            (gexc.BadRequest("Invalid value for field 'resource.machineType': 'zones/z/machineTypes/x'"),
             ["machine_type"]),
        ],
    )
    def test_translated_messages_name_what_to_fix(self, error, expected):
        translated = gc.translate_http_error(
            error, service="Compute Engine", action="creating a VM", project="p",
            field_to_argument={"machineType": "machine_type"})
        assert isinstance(translated, CloudActionRequired)
        for text in expected:
            assert text in str(translated)

    def test_other_errors_are_left_alone(self):
        error = gexc.ServiceUnavailable("try again")
        assert gc.translate_http_error(error, service="s", action="a", project=None, field_to_argument={}) is error


@pytest.mark.parametrize(
    "backend",
    [
        ComputeEngineSpotBackend(zones=["us-central1-a"], machine_type="e2-small", command=["python3", "t.py"],
                                 project_id="my-project", env={"A": "1"}, service_account=SA),
        VertexAISpotBackend(region="us-central1", machine_type="n1-standard-4", image_uri="img",
                            project_id="my-project", timeout_seconds=3600),
    ],
    ids=["compute_engine", "vertex_ai"],
)
def test_trigger_serialize_round_trip_with_gcp_backends(backend):
    from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger

    classpath, kwargs = backend.serialize()
    trigger = SpotTrainingTrigger(backend_classpath=classpath, backend_kwargs=kwargs,
                                  handle={"name": "x", "token": "k-a1"}, attempt=1, checkpoint_prefix="/tmp/c")
    path, data = trigger.serialize()
    json.dumps(data)
    rebuilt = SpotTrainingTrigger(**data)
    assert rebuilt.serialize() == (path, data)
    assert rebuilt.backend.serialize() == (classpath, kwargs)
