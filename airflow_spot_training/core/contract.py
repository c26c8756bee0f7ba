"""The environment contract between the operator and the training it launches.

Every backend hands these variables to the training process, whatever runs it
(a local process, an EC2 user-data script, a SageMaker or Vertex AI job). The
training side reads them with :func:`read_contract`; nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
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
#: a gang (``num_nodes`` > 1): this node's rank (0 .. N-1), the gang's size, and where rank 0
#: listens for its peers (``torch.distributed``'s rendezvous)
NODE_RANK = "SPOT_TRAINING_NODE_RANK"
NUM_NODES = "SPOT_TRAINING_NUM_NODES"
MASTER_ADDR = "SPOT_TRAINING_MASTER_ADDR"
MASTER_PORT = "SPOT_TRAINING_MASTER_PORT"
#: the port rank 0 listens on when the backend does not choose one
DEFAULT_MASTER_PORT = 29500

ALL = (CHECKPOINT_URI, ATTEMPT, CAPACITY, PREEMPTIONS, RUN_KEY, RESULT_URI, TOKEN, INIT_URI, SECRETS)
GANG = (NODE_RANK, NUM_NODES, MASTER_ADDR, MASTER_PORT)


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
    :param num_nodes: machines the attempt runs on together (a gang); 1 for a single node.
    :param node_rank: this node's rank in the gang, 0 .. ``num_nodes`` - 1 (rank 0 is the
        rendezvous host and speaks for the gang in progress records).
    :param master_addr: rank 0's address, where every rank meets (gangs only).
    :param master_port: the port rank 0 listens on (gangs only).

    A gang's contract also sets the standard ``torch.distributed`` variables
    (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), one process
    per node, so ``torch.distributed.init_process_group("gloo")`` needs no arguments.
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
    num_nodes: int = 1
    node_rank: int = 0
    master_addr: str = ""
    master_port: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.num_nodes, int) and self.num_nodes >= 1 and 0 <= self.node_rank < self.num_nodes):
            raise ValueError(f"node_rank={self.node_rank} is not in a gang of num_nodes={self.num_nodes}")

    @property
    def is_gang(self) -> bool:
        return self.num_nodes > 1

    def for_node(self, rank: int, master_addr: str, master_port: int = DEFAULT_MASTER_PORT) -> Contract:
        """The contract of node ``rank`` of this attempt's gang, meeting at ``master_addr:master_port``.

        Each node writes its own result record (:func:`node_result_uri`); rank 0's is the attempt's.
        """
        return replace(self, node_rank=rank, master_addr=master_addr, master_port=int(master_port),
                       result_uri=node_result_uri(self.result_uri, rank))

    def gang_env(self) -> dict[str, str]:
        """The gang's variables (ours and ``torch.distributed``'s); empty on a single node.

        Before a node is known (no ``master_addr``: the platform places the nodes, as SageMaker
        and Vertex AI do), only the gang's size; the machine finds its rank from the platform
        (:func:`platform_node`).
        """
        if not self.is_gang:
            return {}
        if not self.master_addr:
            return {NUM_NODES: str(self.num_nodes)}
        return {
            NODE_RANK: str(self.node_rank), NUM_NODES: str(self.num_nodes),
            MASTER_ADDR: self.master_addr, MASTER_PORT: str(self.master_port),
            "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
            "RANK": str(self.node_rank), "WORLD_SIZE": str(self.num_nodes), "LOCAL_RANK": "0",
        }

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
        env.update(self.gang_env())
        return env


#: where SageMaker describes the job's hosts on every one of them
SAGEMAKER_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
#: the variable Vertex AI describes a distributed job's replicas in
VERTEX_CLUSTER_SPEC = "CLUSTER_SPEC"


def platform_node(environ: Mapping[str, str], sagemaker_config: Mapping[str, object] | None = None
                  ) -> tuple[int, str, int] | None:
    """``(rank, master_addr, master_port)`` of this node, as a platform that placed the gang says.

    Vertex AI: ``CLUSTER_SPEC`` (``workerpool0`` is rank 0, ``workerpool1[i]`` rank ``i + 1``).
    SageMaker: its resource config (``hosts`` sorted, ``hosts[0]`` is rank 0). ``None`` when
    neither is there.
    """
    if environ.get(VERTEX_CLUSTER_SPEC):
        spec = json.loads(environ[VERTEX_CLUSTER_SPEC])
        task, cluster = spec.get("task") or {}, spec.get("cluster") or {}
        offset = {"workerpool0": 0, "workerpool1": 1}.get(str(task.get("type")), 0)
        host, _, port = str((cluster.get("workerpool0") or [""])[0]).partition(":")
        return offset + int(task.get("index") or 0), host, int(port or DEFAULT_MASTER_PORT)
    if sagemaker_config:
        hosts = sorted(str(h) for h in sagemaker_config.get("hosts") or [])  # type: ignore[union-attr]
        current = str(sagemaker_config.get("current_host"))
        if current in hosts:
            return hosts.index(current), hosts[0], DEFAULT_MASTER_PORT
    return None


def node_result_uri(result_uri: str, rank: int) -> str:
    """Where node ``rank`` of a gang writes its result record: rank 0 the attempt's, rank r ``...node-r.json``."""
    if rank == 0 or not result_uri:
        return result_uri
    return f"{result_uri.removesuffix('.json')}.node-{rank}.json"


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
        num_nodes=int(env.get(NUM_NODES) or 1),
        node_rank=int(env.get(NODE_RANK) or 0),
        master_addr=env.get(MASTER_ADDR, ""),
        master_port=int(env.get(MASTER_PORT) or 0),
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
