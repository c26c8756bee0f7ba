"""A plain script for the synced folder: it writes state files into a local folder and knows nothing else.

The state is ``{"step": n, "total": 0 + 1 + ... + (n - 1)}``, written as ``state-<step>.json``
into ``$SPOT_TRAINING_CHECKPOINT_DIR`` every ``--checkpoint-every`` steps; at start it
resumes from the newest file there. It handles no signal. Every step prints ``step N``.
Attempt 1 stops stepping at ``--pause-at`` (it keeps running), so a reclaim lands when its
newest write is long finished, whatever the machine's speed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--checkpoint-every", type=int, default=3)
    p.add_argument("--step-seconds", type=float, default=0.05)
    p.add_argument("--pause-at", type=int, default=None)
    args = p.parse_args()
    folder = os.environ["SPOT_TRAINING_CHECKPOINT_DIR"]
    files = sorted(glob.glob(os.path.join(folder, "state-*.json")))
    state = json.loads(open(files[-1]).read()) if files else {"step": 0, "total": 0}
    step, total = state["step"], state["total"]
    print(f"attempt {os.environ.get('SPOT_TRAINING_ATTEMPT')}: starting at step {step}", flush=True)
    while step < args.steps:
        if step == args.pause_at and os.environ.get("SPOT_TRAINING_ATTEMPT") == "1":
            print(f"paused at step {step}", flush=True)
            while True:
                time.sleep(1)
        time.sleep(args.step_seconds)
        total, step = total + step, step + 1
        print(f"step {step} total {total}", flush=True)
        if step % args.checkpoint_every == 0 or step == args.steps:
            with open(os.path.join(folder, f"state-{step:08d}.json"), "w") as f:
                json.dump({"step": step, "total": total}, f)
    print(f"done at step {step} total {total}", flush=True)
    return 0 if total == step * (step - 1) // 2 else 1


if __name__ == "__main__":
    sys.exit(main())
