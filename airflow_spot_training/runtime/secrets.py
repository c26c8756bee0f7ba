"""Secrets for the training, passed by reference and resolved on the machine.

A backend's ``secrets={"HF_TOKEN": <reference>}`` travels as ``SPOT_TRAINING_SECRETS``
(names and references only: never the values, which would otherwise sit in user data,
instance metadata or a job description). The EC2 and Compute Engine bootstraps resolve
them before the training starts; on SageMaker and Vertex AI, :func:`read_contract`
(``from airflow_spot_training.runtime import read_contract``) resolves what is not in the
environment yet.

References: an AWS Secrets Manager secret ARN or name (read with boto3 and the machine's
role), or a GCP Secret Manager resource ``projects/P/secrets/S[/versions/V]`` (read
through the Secret Manager REST API with the machine's service account token from the
metadata server). The SDKs are imported only when a reference needs them.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from typing import Mapping, MutableMapping

from airflow_spot_training.core import contract as spot_contract
from airflow_spot_training.core.contract import SECRETS, Contract

GCP_SECRETS_ENV = "SPOT_TRAINING_SECRETS_URL"
GCP_SECRETS_URL = "https://secretmanager.googleapis.com"


class SecretError(RuntimeError):
    """A secret reference could not be resolved; the message names it and what to grant."""


def resolve_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put every secret of ``SPOT_TRAINING_SECRETS`` that is not set yet into ``environ``.

    Returns the names it resolved.
    """
    env = os.environ if environ is None else environ
    refs: Mapping[str, str] = json.loads(env.get(SECRETS) or "{}")
    resolved = []
    for name, ref in refs.items():
        if env.get(name):
            continue  # the bootstrap resolved it already
        env[name] = secret_value(ref)
        resolved.append(name)
    return resolved


def secret_value(ref: str) -> str:
    """The string value behind one reference (AWS or GCP, told apart by its form)."""
    if ref.startswith("projects/"):
        return _gcp_secret(ref)
    return _aws_secret(ref)


def _aws_secret(ref: str) -> str:
    try:
        import boto3
    except ImportError as e:
        raise SecretError(f"secret {ref!r} is an AWS Secrets Manager reference, but boto3 is not installed "
                          "in the training image") from e
    try:
        return str(boto3.client("secretsmanager").get_secret_value(SecretId=ref)["SecretString"])
    except Exception as e:
        raise SecretError(f"could not read secret {ref!r} from AWS Secrets Manager ({e}); the machine's role "
                          "needs secretsmanager:GetSecretValue on it") from e


def _gcp_secret(ref: str) -> str:
    from airflow_spot_training.runtime.interruption import GCE_METADATA_ENDPOINT, GCE_METADATA_URL_ENV

    version = ref if "/versions/" in ref else f"{ref.rstrip('/')}/versions/latest"
    metadata = os.environ.get(GCE_METADATA_URL_ENV) or GCE_METADATA_ENDPOINT
    base = os.environ.get(GCP_SECRETS_ENV) or GCP_SECRETS_URL
    try:
        token_request = urllib.request.Request(
            f"{metadata}/computeMetadata/v1/instance/service-accounts/default/token",
            headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(token_request, timeout=10) as resp:
            token = json.load(resp)["access_token"]
        access = urllib.request.Request(f"{base}/v1/{version}:access", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(access, timeout=30) as resp:
            return base64.b64decode(json.load(resp)["payload"]["data"]).decode()
    except Exception as e:
        raise SecretError(f"could not read secret {version!r} from Secret Manager ({e}); the machine's service "
                          "account needs roles/secretmanager.secretAccessor on it") from e


def read_contract(environ: Mapping[str, str] | None = None, *, resolve: bool = True) -> Contract:
    """The attempt's environment contract; first, the secrets passed by reference are put in
    ``os.environ`` (unless a bootstrap did it already, or ``resolve`` is false)."""
    if environ is None and resolve and os.environ.get(SECRETS):
        resolve_secrets()
    contract = spot_contract.read_contract(environ)
    if environ is None and contract.is_gang and not contract.master_addr:
        contract = _place_on_platform(contract)
    return contract


def _place_on_platform(contract: Contract) -> Contract:
    """A gang the platform placed (SageMaker, Vertex AI): this node's rank and rank 0, from the platform.

    Exported into ``os.environ`` too (``SPOT_TRAINING_NODE_RANK``, ``MASTER_ADDR``, ``RANK``, ...),
    so the checkpoint manager writes this rank's shard and ``init_process_group`` finds its peers.
    """
    config = None
    if os.path.exists(spot_contract.SAGEMAKER_RESOURCE_CONFIG):
        with open(spot_contract.SAGEMAKER_RESOURCE_CONFIG) as f:
            config = json.load(f)
    placed = spot_contract.platform_node(os.environ, config)
    if placed is None:
        raise RuntimeError(
            f"this attempt is a gang of {contract.num_nodes} nodes, but this machine was told neither its rank "
            f"({spot_contract.NODE_RANK}) nor where the platform describes it ({spot_contract.VERTEX_CLUSTER_SPEC}, "
            f"{spot_contract.SAGEMAKER_RESOURCE_CONFIG})"
        )
    rank, master_addr, master_port = placed
    contract = contract.for_node(rank, master_addr, master_port)
    os.environ.update(contract.gang_env())
    return contract
