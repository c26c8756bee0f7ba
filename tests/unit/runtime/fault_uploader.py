"""Child process for the folder-sync fault-injection test.

Usage: python fault_uploader.py PREFIX FOLDER DIE_AT

Uploads the newest finished checkpoint of FOLDER to PREFIX with the folder-sync
uploader and kills itself with ``os._exit`` at the DIE_AT-th filesystem operation under
PREFIX, counted at the OS boundary: opening a file for writing, each write (the fatal
write writes half its bytes first), close, fsync, rename/replace, remove, rmtree.
DIE_AT=0 never dies and prints the number of operations the upload takes.
"""

from __future__ import annotations

import sys

from fs_faults import install

from airflow_spot_training.runtime.checkpoint import CheckpointManager
from airflow_spot_training.runtime.folder_sync import FolderUploader

prefix, folder, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
counter = install(die_at, prefix, paths_under_root_only=True)
uploader = FolderUploader(CheckpointManager(prefix, keep_last=1), folder, finished_by="marker", max_concurrency=1)
assert uploader.upload_newest() is not None
print(counter.count)
