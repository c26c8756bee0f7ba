"""Child process for the checkpoint fault-injection test.

Usage: python fault_writer.py ROOT STEP DIE_AT KEEP_LAST

Saves checkpoint STEP under ROOT (3 payload files) and kills itself with
``os._exit`` at the DIE_AT-th filesystem operation, counting at the OS boundary:
opening a file for writing, each write (the fatal write writes half its bytes
first), close, fsync, rename/replace, remove, rmtree. DIE_AT=0 never dies and
prints the number of operations a save takes.
"""

from __future__ import annotations

import builtins
import os
import shutil
import sys

root, step, die_at, keep_last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
count = 0


def tick(partial=None):
    global count
    count += 1
    if die_at and count == die_at:
        if partial is not None:
            partial()
        os._exit(137)


class _Writer:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        tick(partial=lambda: (self._f.write(data[: max(1, len(data) // 2)]), self._f.flush()))
        return self._f.write(data)

    def close(self):
        tick()
        return self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_open = builtins.open


def open_(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    if isinstance(file, str) and file.startswith(root) and any(c in mode for c in "wax+"):
        tick()
        return _Writer(f)
    return f


def wrap(module, name):
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        tick()
        return real(*args, **kwargs)

    setattr(module, name, wrapped)


from airflow_spot_training.runtime.checkpoint import CheckpointManager  # noqa: E402

builtins.open = open_
for mod, name in [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "remove"), (os, "unlink"),
                  (shutil, "rmtree")]:
    wrap(mod, name)

manager = CheckpointManager(root, keep_last=keep_last)
payload = {f"part{i}.bin": bytes([step % 256]) * (1000 + i) for i in range(3)}
manager.save(step, payload, total_steps=100)
print(count)
