"""The user guide's training loop with no notice handling: a reclaim ends it with a hard kill."""

from __future__ import annotations

import sys

from airflow_spot_training.examples.resumable import parse_args, restore, save, train_one_step
from airflow_spot_training.runtime import CheckpointManager, read_contract, write_metrics


def main() -> int:
    args = parse_args()
    contract = read_contract()
    manager = CheckpointManager(contract.checkpoint_uri, keep_last=3, every_steps=args.checkpoint_every)
    state = restore(manager)
    print(f"attempt {contract.attempt} on {contract.capacity}: starting at step {state['step']}", flush=True)
    while state["step"] < args.steps:
        state = train_one_step(state, args.step_seconds)
        if manager.should_save(state["step"]):
            save(manager, state, args.steps, contract.attempt)
    save(manager, state, args.steps, contract.attempt, reason="final")
    write_metrics({"final_loss": state["loss"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
