"""Secrets passed by reference are resolved on the machine (AWS Secrets Manager on moto, GCP's REST API on the fake)."""

from __future__ import annotations

import json

import pytest

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.runtime.secrets import SecretError, read_contract, resolve_secrets
from tests.fakes.gce_server import GCEServer


def _contract_env(secrets: dict[str, str]) -> dict[str, str]:
    return Contract("/ck", 1, "spot", 0, "k", token="k-a1", secrets=secrets).to_env()


def test_aws_secret_is_resolved_with_boto3_and_the_machines_credentials(aws, monkeypatch):
    import boto3

    arn = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="hf-token", SecretString="hf_s3cr3t")["ARN"]
    for name, value in _contract_env({"HF_TOKEN": arn, "BY_NAME": "hf-token"}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    contract = read_contract()
    import os

    assert os.environ["HF_TOKEN"] == "hf_s3cr3t" and os.environ["BY_NAME"] == "hf_s3cr3t"
    assert contract.secrets == {"HF_TOKEN": arn, "BY_NAME": "hf-token"}
    assert "hf_s3cr3t" not in json.dumps(_contract_env(contract.secrets))  # only references travel


def test_gcp_secret_is_read_through_the_rest_api_with_the_metadata_token(monkeypatch):
    with GCEServer() as server:
        server.fake.metadata["instance/service-accounts/default/token"] = json.dumps({"access_token": "t"})
        server.fake.secrets["projects/p/secrets/db/versions/3"] = "pa55"
        monkeypatch.setenv("SPOT_TRAINING_METADATA_URL", server.endpoint)
        monkeypatch.setenv("SPOT_TRAINING_SECRETS_URL", server.endpoint)
        env = _contract_env({"DB_PASSWORD": "projects/p/secrets/db/versions/3"})
        assert resolve_secrets(env) == ["DB_PASSWORD"] and env["DB_PASSWORD"] == "pa55"
        assert resolve_secrets(env) == []  # already set: nothing is read twice


def test_an_unreadable_secret_names_the_reference_and_the_permission(monkeypatch):
    with GCEServer() as server:
        server.fake.metadata["instance/service-accounts/default/token"] = json.dumps({"access_token": "t"})
        monkeypatch.setenv("SPOT_TRAINING_METADATA_URL", server.endpoint)
        monkeypatch.setenv("SPOT_TRAINING_SECRETS_URL", server.endpoint)
        with pytest.raises(SecretError, match="projects/p/secrets/missing/versions/latest.*secretAccessor"):
            resolve_secrets(_contract_env({"X": "projects/p/secrets/missing"}))
