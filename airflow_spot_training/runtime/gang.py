"""What a training running on several machines at once (a gang) needs from the runtime (needs torch).

The backend hands every node its rank, the gang's size and rank 0's address through the
contract (:class:`~airflow_spot_training.core.contract.Contract`: ``SPOT_TRAINING_NODE_RANK``,
``SPOT_TRAINING_NUM_NODES``, ``SPOT_TRAINING_MASTER_ADDR``, ``SPOT_TRAINING_MASTER_PORT``, and
the standard ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), so
``torch.distributed.init_process_group("gloo")`` (or ``"nccl"``) needs no arguments;
:func:`join_gang` does it with a timeout that does not outlive a lost node by long.

An interruption notice reaches the nodes at slightly different steps; the nodes must stop
at the same one, or the ones still training block in a collective with a peer that left.
:func:`gang_stop_requested` (called by every rank after every step) makes them agree: it is
true on every rank as soon as one rank has the notice. Then every rank saves (its shard:
:class:`~airflow_spot_training.runtime.checkpoint.CheckpointManager` writes one per rank in a
gang, and the step commits once all are there) and exits 143.

Imports neither Airflow nor a cloud SDK.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from airflow_spot_training.core.contract import Contract

#: seconds a collective waits for a peer before giving up (a lost node ends the gang anyway)
DEFAULT_TIMEOUT_SECONDS = 120.0


def join_gang(contract: Contract, backend: str = "gloo", timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """Join the attempt's gang (``init_process_group``); ``False``, doing nothing, on a single node.

    :param contract: the attempt's contract (:func:`airflow_spot_training.runtime.read_contract`).
    :param backend: the ``torch.distributed`` backend: ``gloo`` on CPUs, ``nccl`` on GPUs.
    :param timeout_seconds: how long a collective waits for a peer.
    """
    if not contract.is_gang:
        return False
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method=f"tcp://{contract.master_addr}:{contract.master_port}",
            rank=contract.node_rank, world_size=contract.num_nodes, timeout=timedelta(seconds=timeout_seconds),
        )
    return True


def gang_stop_requested(requested: bool) -> bool:
    """Whether any node of the gang has the notice; the same answer on every rank.

    Every rank must call it at the same point of every step (it is a collective). On a
    single node (no process group) it is ``requested`` itself.

    :param requested: this node's own flag (``InterruptionWatcher.requested``).
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return requested
    flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def leave_gang() -> None:
    """Tear the process group down (at the end of a training that joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
