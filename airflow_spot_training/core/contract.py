"""The environment contract between the operator and the training it launches.

Every backend hands these variables to the training process, whatever runs it
(a local process, an EC2 user-data script, a SageMaker or Vertex AI job). The
training side reads them with :func:`read_contract`; nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Mapping

CHECKPOINT_URI = "SPOT_TRAINING_CHECKPOINT_URI"
ATTEMPT = "SPOT_TRAINING_ATTEMPT"
CAPACITY = "SPOT_TRAINING_CAPACITY"
PREEMPTIONS = "SPOT_TRAINING_PREEMPTIONS"
RUN_KEY = "SPOT_TRAINING_RUN_KEY"
RESULT_URI = "SPOT_TRAINING_RESULT_URI"
TOKEN = "SPOT_TRAINING_TOKEN"
#: a committed checkpoint (a ``step-N`` directory) to warm-start from when the run's own prefix has none
INIT_URI = "SPOT_TRAINING_INIT_URI"
#: JSON object {ENV_NAME: secret reference}: resolved on the machine, never sent as values
SECRETS = "SPOT_TRAINING_SECRETS"
#: set by the folder-sync wrapper (not by backends): the local folder a training that
#: only knows local files writes its checkpoints into; the wrapper syncs it with the prefix
CHECKPOINT_DIR = "SPOT_TRAINING_CHECKPOINT_DIR"

ALL = (CHECKPOINT_URI, ATTEMPT, CAPACITY, PREEMPTIONS, RUN_KEY, RESULT_URI, TOKEN, INIT_URI, SECRETS)


@dataclass(frozen=True)
class Contract:
    """What one attempt of the training is told about itself.

    :param checkpoint_uri: where checkpoints are read from and committed to; the same
        for every attempt and every Airflow retry of the task.
    :param attempt: 1-based attempt number, counted across Airflow retries.
    :param capacity: ``spot`` or ``on_demand``.
    :param preemptions: preemptions counted before this attempt started.
    :param run_key: an id that is stable across attempts and retries of the task.
    :param result_uri: where a bootstrap script writes the attempt's result record.
    :param token: the attempt's token; result, progress and commit records carry it, so a
        record left at the same prefix by another run is never taken for this attempt's.
    :param secrets: environment variables to resolve on the machine from a secret store:
        ``{name: reference}`` (AWS Secrets Manager ARN or name, GCP Secret Manager resource).
    :param init_uri: a committed checkpoint of an earlier run (its ``step-N`` directory) that the
        training starts from while ``checkpoint_uri`` holds no checkpoint of its own (warm start);
        empty for a start from scratch. The run's own checkpoints still go to ``checkpoint_uri``.
    """

    checkpoint_uri: str
    attempt: int
    capacity: str
    preemptions: int
    run_key: str
    result_uri: str = ""
    token: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict)
    init_uri: str = ""

    def to_env(self) -> dict[str, str]:
        env = {
            CHECKPOINT_URI: self.checkpoint_uri,
            ATTEMPT: str(self.attempt),
            CAPACITY: self.capacity,
            PREEMPTIONS: str(self.preemptions),
            RUN_KEY: self.run_key,
            RESULT_URI: self.result_uri,
            TOKEN: self.token,
            INIT_URI: self.init_uri,
        }
        env.update(secret_refs_env(self.secrets))
        return env


def secret_refs_env(secrets: Mapping[str, str] | None) -> dict[str, str]:
    """The contract variable naming the secrets to resolve on the machine (empty when there are none)."""
    return {SECRETS: json.dumps(dict(secrets), sort_keys=True)} if secrets else {}


def read_contract(environ: Mapping[str, str] | None = None) -> Contract:
    """Read the contract from the environment; raise a clear error if it is missing.

    (Training code uses :func:`airflow_spot_training.runtime.read_contract`, which also
    resolves the secrets passed by reference.)
    """
    env = os.environ if environ is None else environ
    missing = [name for name in (CHECKPOINT_URI, ATTEMPT, CAPACITY, RUN_KEY) if not env.get(name)]
    if missing:
        raise RuntimeError(
            "this process was not launched by a spot-training backend: "
            f"missing environment variable(s) {', '.join(missing)}"
        )
    return Contract(
        checkpoint_uri=env[CHECKPOINT_URI],
        attempt=int(env[ATTEMPT]),
        capacity=env[CAPACITY],
        preemptions=int(env.get(PREEMPTIONS, "0") or 0),
        run_key=env[RUN_KEY],
        result_uri=env.get(RESULT_URI, ""),
        token=env.get(TOKEN, ""),
        secrets=json.loads(env[SECRETS]) if env.get(SECRETS) else {},
        init_uri=env.get(INIT_URI, ""),
    )


def run_key(dag_id: str, run_id: str, task_id: str, map_index: int = -1, deployment: str = "") -> str:
    """A short, stable, case-sensitive ASCII id for one task instance of one deployment.

    Usable as a cloud idempotency token prefix, a job-name suffix and a label value:
    lower-case hex only, 20 characters. ``deployment`` (``[spot_training] deployment_id``)
    salts it, so two Airflow deployments sharing an account never derive the same tokens.
    """
    parts = [dag_id, run_id, task_id, str(map_index)] + ([deployment] if deployment else [])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


def attempt_token(key: str, attempt: int) -> str:
    """The idempotency token of one attempt (at most 64 ASCII characters)."""
    return f"{key}-a{attempt}"
