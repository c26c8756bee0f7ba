"""A resumable training, written exactly as the user guide (section 3) says, without a framework.

The "model" is one parameter fitted by gradient descent; what matters is the shape of
the loop, which is the same for a real training:

* read the environment contract the backend hands every attempt (:func:`read_contract`);
* restore the newest *committed* checkpoint under the contract's prefix, or start fresh;
* train inside an :class:`InterruptionWatcher` (SIGTERM plus the cloud's notice); when a
  notice arrives, commit a checkpoint at once and exit with code 143;
* commit a checkpoint when ``manager.should_save(step)`` says so, and the final step at the end;
* record the final metrics for the operator's ledger (:func:`write_metrics`).

Every step prints one line ``step N loss L``: the training's own record of the work it
did (a step printed by two attempts was computed twice). It imports only the runtime:
no Airflow, no cloud SDK, no torch, so it starts fast in a bare container::

    python -m airflow_spot_training.examples.resumable --steps 200 --checkpoint-every 20

For PyTorch, :class:`~airflow_spot_training.runtime.torch_state.TorchCheckpointer` saves and
restores the whole training state in the same places (see ``examples/regression.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from airflow_spot_training.runtime import CheckpointManager, InterruptionWatcher, read_contract, write_metrics

STATE_FILE = "state.json"
#: the exit code of a training that stopped because of an interruption notice (128 + SIGTERM)
EXIT_INTERRUPTED = 143
TARGET = 3.0
LEARNING_RATE = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps of the whole training")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between two checkpoints")
    parser.add_argument("--step-seconds", type=float, default=0.0,
                        help="seconds each step takes (a stand-in for real work)")
    return parser.parse_args(argv)


def fresh_state() -> dict[str, Any]:
    return {"step": 0, "weight": 0.0, "loss": TARGET**2}


def train_one_step(state: dict[str, Any], step_seconds: float) -> dict[str, Any]:
    """One gradient step on ``(weight - TARGET) ** 2``; prints the step it completed.

    :param state: the training state after the previous step.
    :param step_seconds: seconds the step takes.
    """
    time.sleep(step_seconds)
    weight = state["weight"] - LEARNING_RATE * 2 * (state["weight"] - TARGET)
    step = state["step"] + 1
    loss = (weight - TARGET) ** 2
    print(f"step {step} loss {loss:.6f}", flush=True)
    return {"step": step, "weight": weight, "loss": loss}


def restore(manager: CheckpointManager) -> dict[str, Any]:
    """The state of the newest committed checkpoint (or of the warm start, ``init_from=``), or a fresh one.

    :param manager: the checkpoint manager of the contract's prefix.
    """
    latest = manager.resume_point()  # never a partial checkpoint
    if latest is None:
        return fresh_state()
    with manager.open_file(latest, STATE_FILE) as f:
        return json.loads(f.read())


def save(manager: CheckpointManager, state: dict[str, Any], total_steps: int, attempt: int,
         reason: str = "periodic") -> None:
    """Commit ``state`` as the checkpoint of its step (a committed step is never rewritten).

    :param manager: the checkpoint manager of the contract's prefix.
    :param state: the training state to save.
    :param total_steps: the planned number of steps (gives the operator the progress).
    :param attempt: the attempt writing it.
    :param reason: ``periodic``, ``interruption`` or ``final``.
    """
    manager.save(state["step"], {STATE_FILE: json.dumps(state).encode()}, total_steps=total_steps,
                 attempt=attempt, reason=reason)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # [START howto_resumable_training]
    contract = read_contract()  # SPOT_TRAINING_* variables set by the backend
    manager = CheckpointManager(contract.checkpoint_uri, keep_last=3, every_steps=args.checkpoint_every)
    state = restore(manager)  # the newest committed checkpoint, or a fresh start
    print(f"attempt {contract.attempt} on {contract.capacity}: starting at step {state['step']}", flush=True)
    with InterruptionWatcher(aws_imds=True) as watcher:  # SIGTERM + the cloud's notice
        while state["step"] < args.steps:
            state = train_one_step(state, args.step_seconds)
            if watcher.requested:  # the machine is about to go: checkpoint now
                save(manager, state, args.steps, contract.attempt, reason="interruption")
                sys.exit(EXIT_INTERRUPTED)
            if manager.should_save(state["step"]):
                save(manager, state, args.steps, contract.attempt)
    save(manager, state, args.steps, contract.attempt, reason="final")
    write_metrics({"final_loss": state["loss"]})  # shows up in the ledger
    # [END howto_resumable_training]
    return 0


if __name__ == "__main__":
    sys.exit(main())
