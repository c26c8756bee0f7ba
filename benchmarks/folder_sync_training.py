"""The training the folder-sync benchmark runs: a 1 GiB state, saved into a local folder every N steps.

Saves the way a framework does (``torch.save`` into ``checkpoint-<step>/state.pt``, the two
newest kept) and marks each save finished, as the adapters do. At the end prints one JSON
line: the mean step time (saves excluded), the mean save time, and each step's wall-clock
span (so steps that ran while an upload did can be told from the others).
Not a test and not an example: ``benchmarks/folder_sync_cost.py`` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from airflow_spot_training.runtime.checkpoint_folder import announce_adapter, mark_finished  # noqa: E402
from benchmarks.checkpoint_stall import gigabyte_workload  # noqa: E402


def main() -> None:
    steps, every = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    folder = os.environ["SPOT_TRAINING_CHECKPOINT_DIR"]
    announce_adapter(folder, "benchmark")
    workload = gigabyte_workload(steps)
    step_times, save_times, spans = [], [], []
    for step in range(1, steps + 1):
        started, wall = time.perf_counter(), time.time()
        workload.step()
        step_times.append(time.perf_counter() - started)
        spans.append((wall, wall + step_times[-1]))
        if step % every == 0:
            started = time.perf_counter()
            entry = f"checkpoint-{step}"
            os.makedirs(os.path.join(folder, entry))
            torch.save({"model": workload.model.state_dict(), "optimizer": workload.optimizer.state_dict()},
                       os.path.join(folder, entry, "state.pt"))
            mark_finished(folder, entry, step=step, total_steps=steps)
            old = f"checkpoint-{step - 2 * every}"
            if os.path.isdir(os.path.join(folder, old)):
                shutil.rmtree(os.path.join(folder, old))
            save_times.append(time.perf_counter() - started)
    print(json.dumps({"step_seconds": statistics.fmean(step_times), "save_seconds": statistics.fmean(save_times),
                      "steps": steps, "every": every, "spans": spans}), flush=True)


if __name__ == "__main__":
    main()
