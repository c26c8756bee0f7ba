"""A retraining step for a scheduled pipeline: warm-started from the last good model, on its own data window.

The loop is :mod:`airflow_spot_training.examples.resumable`'s; what differs is where it starts:

* its own newest committed checkpoint, when this run already has one (a preemption or a retry);
* else the warm start the operator hands it (``init_from=``, ``contract.init_uri``): the
  previous run's final checkpoint; it then trains ``--steps`` more steps;
* else from scratch.

Every start prints one line ``attempt N on CAPACITY: starting at step S (SOURCE) data A..B``,
the training's own record of where it resumed. Run it as::

    python -m airflow_spot_training.examples.retrain --steps 40 --data-start 2026-01-05 --data-end 2026-01-12
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from airflow_spot_training.examples.resumable import EXIT_INTERRUPTED, STATE_FILE, fresh_state, save, train_one_step
from airflow_spot_training.runtime import CheckpointManager, InterruptionWatcher, read_contract, write_metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps this run trains (on top of a warm start)")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between two checkpoints")
    parser.add_argument("--step-seconds", type=float, default=0.0, help="seconds each step takes")
    parser.add_argument("--data-start", default="", help="first day of this run's data window")
    parser.add_argument("--data-end", default="", help="end of this run's data window")
    return parser.parse_args(argv)


def starting_state(manager: CheckpointManager, steps: int) -> tuple[dict[str, Any], str]:
    """The state this attempt starts from and where it came from (``own``, ``warm start``, ``scratch``).

    :param manager: the checkpoint manager of the contract's prefix (with its ``init_uri``).
    :param steps: the steps this run trains beyond where it started.
    """
    point = manager.resume_point()
    if point is None:
        return {**fresh_state(), "last_step": steps}, "scratch"
    with manager.open_file(point, STATE_FILE) as f:
        state = json.loads(f.read())
    if point.warm_start:  # the previous run's model: this run trains `steps` more on its own data
        return {**state, "last_step": state["step"] + steps}, f"warm start from {point.uri}"
    return state, "own checkpoint"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    contract = read_contract()
    manager = CheckpointManager(contract.checkpoint_uri, keep_last=3, every_steps=args.checkpoint_every)
    state, source = starting_state(manager, args.steps)
    start_step, last_step = state["step"], state["last_step"]
    print(f"attempt {contract.attempt} on {contract.capacity}: starting at step {start_step} ({source}) "
          f"data {args.data_start}..{args.data_end}", flush=True)
    with InterruptionWatcher(aws_imds=True) as watcher:
        while state["step"] < last_step:
            state = {**train_one_step(state, args.step_seconds), "last_step": last_step}
            if watcher.requested:
                save(manager, state, last_step, contract.attempt, reason="interruption")
                sys.exit(EXIT_INTERRUPTED)
            if manager.should_save(state["step"]) and state["step"] < last_step:  # the last one is "final"
                save(manager, state, last_step, contract.attempt)
    save(manager, state, last_step, contract.attempt, reason="final")
    write_metrics({"final_loss": state["loss"], "data_start": args.data_start, "data_end": args.data_end})
    return 0


if __name__ == "__main__":
    sys.exit(main())
