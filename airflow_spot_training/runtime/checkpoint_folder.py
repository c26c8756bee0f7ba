"""The local checkpoint folder a training writes into, as the folder-sync wrapper sees it.

Plain standard library: the adapters (Hugging Face, Lightning) and plain scripts use it
on the training side, the wrapper (:mod:`.folder_sync`) on its side.

Layout of the folder::

    <dir>/checkpoint-500/...                          one checkpoint: a top-level entry
    <dir>/checkpoint-520.ckpt                         (a directory or a single file)
    <dir>/.spot-training/finished/checkpoint-500.json its "finished" marker
    <dir>/.spot-training/adapter.json                 an adapter announced itself

Each top-level entry whose name does not start with ``.`` is one checkpoint. It is
*finished* when its marker exists (an adapter writes it after the framework's save has
returned: :func:`mark_finished`), or, for plain scripts, once nothing in it changed for a
settle interval (:class:`SettleTracker`). Its step is the marker's, else the last number
in its name (``checkpoint-500`` -> 500, ``epoch=1-step=80.ckpt`` -> 80).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from airflow_spot_training.core.contract import CHECKPOINT_DIR

STATE_DIR = ".spot-training"
FINISHED_DIR = f"{STATE_DIR}/finished"
ADAPTER_FILE = f"{STATE_DIR}/adapter.json"
#: SageMaker syncs this folder itself (``CheckpointConfig.LocalPath``)
SAGEMAKER_LOCAL_PATH = "/opt/ml/checkpoints"
_TRAILING_NUMBER = re.compile(r"(\d+)(?!.*\d)")

#: a file's (relative path, size, mtime in ns): what tells two versions of an entry apart
Signature = tuple[tuple[str, int, int], ...]


def checkpoint_dir(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The folder to write checkpoints into.

    ``explicit`` if given; else ``SPOT_TRAINING_CHECKPOINT_DIR`` (set by the folder-sync
    wrapper); else SageMaker's checkpoint path when it exists; else an error that says how
    to run the training.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get(CHECKPOINT_DIR):
        return env[CHECKPOINT_DIR]
    if os.path.isdir(SAGEMAKER_LOCAL_PATH):
        return SAGEMAKER_LOCAL_PATH
    raise RuntimeError(
        f"no checkpoint folder: {CHECKPOINT_DIR} is not set. Turn on checkpoint_sync in the backend "
        "(it runs the training under airflow_spot_training.runtime.folder_sync), or pass the folder explicitly."
    )


def step_from_name(name: str) -> int | None:
    """The last number in an entry's name, or ``None``."""
    match = _TRAILING_NUMBER.search(name)
    return int(match.group(1)) if match else None


# -- markers -----------------------------------------------------------------------------
def _atomic_write_json(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_finished(folder: str, entry: str, *, step: int, total_steps: int | None = None,
                  epoch: int | None = None, reason: str = "periodic", **extra: Any) -> str:
    """Say that checkpoint ``entry`` (a top-level name in ``folder``) is completely written.

    Call it after the framework's save returned; the wrapper uploads the entry then.
    """
    if "/" in entry or entry.startswith("."):
        raise ValueError(f"{entry!r} is not a top-level checkpoint name")
    path = marker_path(folder, entry)
    _atomic_write_json(path, {"entry": entry, "step": int(step), "total_steps": total_steps, "epoch": epoch,
                              "reason": reason, "finished_at": time.time(), **extra})
    return path


def marker_path(folder: str, entry: str) -> str:
    return os.path.join(folder, FINISHED_DIR, f"{entry}.json")


def remove_entry(folder: str, entry: str) -> None:
    """Delete a checkpoint from the folder: its marker first, so it stops counting as finished at once."""
    path = os.path.join(folder, entry)
    for target in (marker_path(folder, entry), path):
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
        except FileNotFoundError:
            pass


def read_marker(folder: str, entry: str) -> dict[str, Any] | None:
    try:
        with open(marker_path(folder, entry)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def announce_adapter(folder: str, name: str) -> None:
    """Tell the wrapper that an adapter marks finished saves: unmarked entries are never uploaded."""
    _atomic_write_json(os.path.join(folder, ADAPTER_FILE), {"adapter": name, "pid": os.getpid(), "at": time.time()})


def adapter_announced(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, ADAPTER_FILE))


# -- entries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One checkpoint in the folder: a top-level file or directory."""

    name: str
    path: str
    signature: Signature

    def files(self) -> dict[str, str]:
        """Payload names (``<entry>/<relative path>``) -> local paths."""
        if os.path.isfile(self.path):
            return {self.name: self.path}
        return {f"{self.name}/{rel}": os.path.join(self.path, *rel.split("/")) for rel, _, _ in self.signature}


def signature(path: str) -> Signature:
    """What an entry looks like now; empty when it vanished or has no files."""
    try:
        if os.path.isfile(path):
            st = os.stat(path)
            return ((os.path.basename(path), st.st_size, st.st_mtime_ns),)
        out = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                full = os.path.join(root, name)
                st = os.stat(full)
                out.append((os.path.relpath(full, path).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
        return tuple(out)
    except FileNotFoundError:
        return ()


def list_entries(folder: str) -> list[Entry]:
    """The checkpoints in the folder now (hidden names and ``*.tmp`` left out)."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    entries = []
    for name in names:
        if name.startswith(".") or name.endswith(".tmp"):
            continue
        path = os.path.join(folder, name)
        sig = signature(path)
        if sig:
            entries.append(Entry(name, path, sig))
    return entries


class SettleTracker:
    """Finished-by-settling: an entry whose signature stayed the same for ``settle_seconds``.

    Measured with this process's monotonic clock from the first time a signature was seen,
    never from file modification times (the training's clock may differ).
    """

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._first_seen: dict[str, tuple[Signature, float]] = {}

    def settled(self, entry: Entry, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        seen = self._first_seen.get(entry.name)
        if seen is None or seen[0] != entry.signature:
            self._first_seen[entry.name] = (entry.signature, now)
            return self.settle_seconds <= 0
        return now - seen[1] >= self.settle_seconds
