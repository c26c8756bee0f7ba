"""Child process for the checkpoint fault-injection test.

Usage: python fault_writer.py ROOT STEP DIE_AT KEEP_LAST

Saves checkpoint STEP under ROOT (3 payload files) and kills itself with
``os._exit`` at the DIE_AT-th filesystem operation, counting at the OS boundary:
opening a file for writing, each write (the fatal write writes half its bytes
first), close, fsync, rename/replace, remove, rmtree. DIE_AT=0 never dies and
prints the number of operations a save takes.
"""

from __future__ import annotations

import sys

from fs_faults import install

from airflow_spot_training.runtime.checkpoint import CheckpointManager

root, step, die_at, keep_last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
counter = install(die_at, root, paths_under_root_only=False)
manager = CheckpointManager(root, keep_last=keep_last)
payload = {f"part{i}.bin": bytes([step % 256]) * (1000 + i) for i in range(3)}
manager.save(step, payload, total_steps=100)
print(counter.count)
