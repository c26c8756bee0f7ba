"""Child process for the folder-sync fault-injection test.

Usage: python fault_uploader.py PREFIX FOLDER DIE_AT

Uploads the newest finished checkpoint of FOLDER to PREFIX with the folder-sync
uploader and kills itself with ``os._exit`` at the DIE_AT-th filesystem operation under
PREFIX, counted at the OS boundary: opening a file for writing, each write (the fatal
write writes half its bytes first), close, fsync, rename/replace, remove, rmtree.
DIE_AT=0 never dies and prints the number of operations the upload takes.
"""

from __future__ import annotations

import builtins
import os
import shutil
import sys

prefix, folder, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
    if isinstance(file, str) and file.startswith(prefix) and any(c in mode for c in "wax+"):
        tick()
        return _Writer(f)
    return f


def wrap(module, name):
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        if args and str(args[0]).startswith(prefix):
            tick()
        return real(*args, **kwargs)

    setattr(module, name, wrapped)


from airflow_spot_training.runtime.checkpoint import CheckpointManager  # noqa: E402
from airflow_spot_training.runtime.folder_sync import FolderUploader  # noqa: E402

builtins.open = open_
for mod, name in [(os, "replace"), (os, "rename"), (os, "remove"), (os, "unlink"), (shutil, "rmtree")]:
    wrap(mod, name)
real_fsync = os.fsync
os.fsync = lambda fd: (tick(), real_fsync(fd))[1]

uploader = FolderUploader(CheckpointManager(prefix, keep_last=1), folder, finished_by="marker", max_concurrency=1)
assert uploader.upload_newest() is not None
print(count)
