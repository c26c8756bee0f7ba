"""A plain training script: it only writes files into a folder, and imports nothing of ours.

The state is ``{"step": n, "total": 0 + 1 + ... + (n - 1)}``, written as
``state-<step>.json`` into ``$SPOT_TRAINING_CHECKPOINT_DIR`` every ``--write-every`` steps
(the last two are kept). At start it resumes from the newest file there. Run under the
synced folder (a backend with ``checkpoint_sync``), that is all it takes to survive
preemptions: the wrapper restores the newest committed file before the start and uploads
each file once it has not changed for the settle interval. It handles no signal: the
notice (SIGTERM) ends it at once, and the newest finished file is what the next attempt
gets. ``total == steps * (steps - 1) // 2`` at the end shows no step was lost or counted twice.

    python -m airflow_spot_training.examples.plain_folder --steps 30 --write-every 3
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


def newest_state(folder: str) -> dict[str, int]:
    for path in sorted(glob.glob(os.path.join(folder, "state-*.json")), reverse=True):
        try:
            with open(path) as f:
                return json.load(f)
        except ValueError:  # a write cut short: try the one before
            continue
    return {"step": 0, "total": 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--write-every", type=int, default=3)
    p.add_argument("--step-seconds", type=float, default=0.05)
    p.add_argument("--pause-at", type=int, default=None, help="stop stepping (but keep running) at this step")
    args = p.parse_args(argv)
    folder = os.environ["SPOT_TRAINING_CHECKPOINT_DIR"]
    state = newest_state(folder)
    step, total = state["step"], state["total"]
    print(json.dumps({"event": "start", "step": step}), flush=True)
    while step < args.steps:
        if step == args.pause_at:
            print(json.dumps({"event": "paused", "step": step}), flush=True)
            while True:
                time.sleep(1)
        time.sleep(args.step_seconds)
        total += step
        step += 1
        print(json.dumps({"event": "step", "step": step}), flush=True)
        if step % args.write_every == 0 or step == args.steps:
            with open(os.path.join(folder, f"state-{step:08d}.json"), "w") as f:
                json.dump({"step": step, "total": total}, f)
            for old in sorted(glob.glob(os.path.join(folder, "state-*.json")))[:-2]:
                os.remove(old)
    print(json.dumps({"event": "done", "step": step, "total": total}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
