"""The folder-sync wrapper: a local checkpoint folder kept in step with the checkpoint prefix.

::

    python -m airflow_spot_training.runtime.folder_sync --dir /mnt/checkpoint [options] -- <command>

1. restores the newest committed checkpoint under ``SPOT_TRAINING_CHECKPOINT_URI`` into
   ``--dir`` (and marks it finished), so the training finds it as if it had written it;
2. runs ``<command>`` as its child with ``SPOT_TRAINING_CHECKPOINT_DIR=<dir>``;
3. uploads, in a background thread, each finished checkpoint (see
   :mod:`.checkpoint_folder`) with the commit protocol: payload files first, the commit
   record last, so a half-uploaded checkpoint is never resumed from; superseded ones are
   skipped; bandwidth and concurrency are bounded; ``keep_last`` prunes the prefix; the
   wrapper runs at a lower CPU priority than the training (``--nice``);
4. on the interruption notice (SIGTERM, or the AWS / Compute Engine metadata notice with
   ``--aws-imds`` / ``--gce-metadata``) forwards SIGTERM to the child, lifts the bandwidth
   cap and uploads the newest finished checkpoint at once;
5. when the child exits, uploads the newest finished checkpoint (after an exit code 0,
   the newest one whatever its settle state: a process that exited 0 finished its writes)
   and exits with the child's code.

The child dies with this process (``PR_SET_PDEATHSIG`` on Linux): a hard kill of the
machine's stand-in takes the training with it, as a real reclaim does.

Imports neither Airflow nor a cloud SDK; fsspec resolves ``s3://`` / ``gs://``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from airflow_spot_training.core.contract import CHECKPOINT_DIR, read_contract
from airflow_spot_training.runtime.checkpoint import Checkpoint, CheckpointError, CheckpointManager
from airflow_spot_training.runtime.checkpoint_folder import (
    STATE_DIR,
    Entry,
    SettleTracker,
    adapter_announced,
    list_entries,
    mark_finished,
    read_marker,
    signature,
    step_from_name,
)
from airflow_spot_training.runtime.interruption import InterruptionWatcher

log = logging.getLogger("airflow_spot_training.folder_sync")

CHUNK_BYTES = 8 * 1024 * 1024
EXIT_WRAPPER_ERROR = 70  # EX_SOFTWARE: the wrapper itself failed before the training ran
#: run in the child before exec: die with the parent (Linux), and not outlive a parent that already went
_CHILD_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(137)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def emit(action: str, **fields: Any) -> None:
    """One JSON line on stdout per thing the wrapper did (the attempt's log keeps it)."""
    print(json.dumps({"event": "folder-sync", "action": action, "at": round(time.time(), 3), **fields}, default=str),
          flush=True)


class _Superseded(Exception):
    """An upload abandoned because a newer finished checkpoint must go first (notice)."""


class BandwidthLimiter:
    """At most ``bytes_per_second`` on average across threads; ``None`` or :meth:`lift`: no cap."""

    def __init__(self, bytes_per_second: float | None) -> None:
        self.bytes_per_second = bytes_per_second
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def lift(self) -> None:
        self.bytes_per_second = None

    def consume(self, nbytes: int) -> None:
        rate = self.bytes_per_second
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + nbytes / rate
        if start > now:
            time.sleep(start - now)


@dataclass(frozen=True)
class Candidate:
    """A finished checkpoint in the folder, and the step it will be committed as."""

    entry: Entry
    step: int
    marker: dict[str, Any] | None


class FolderUploader:
    """Finds finished checkpoints in ``folder`` and commits the newest under the prefix.

    :param manager: the prefix (its ``keep_last`` is the retention).
    :param folder: the local checkpoint folder.
    :param settle_seconds: unmarked entries are finished once unchanged this long.
    :param finished_by: ``auto``, ``marker`` or ``settle`` (see :class:`~airflow_spot_training.core.folder_sync.FolderSync`).
    :param attempt: written to commit records.
    """

    def __init__(self, manager: CheckpointManager, folder: str, *, settle_seconds: float = 10.0,
                 finished_by: str = "auto", max_concurrency: int = 4, max_bytes_per_second: float | None = None,
                 poll_seconds: float = 1.0, attempt: int | None = None,
                 on_commit: Callable[[Checkpoint], None] | None = None) -> None:
        self.manager = manager
        self.folder = folder
        self.finished_by = finished_by
        self.max_concurrency = max_concurrency
        self.poll_seconds = poll_seconds
        self.attempt = attempt
        self.limiter = BandwidthLimiter(max_bytes_per_second)
        self.settle = SettleTracker(settle_seconds)
        self.on_commit = on_commit
        latest = manager.latest()
        self.committed_step: int | None = latest.step if latest else None
        self.uploaded: dict[str, tuple] = {}  # entry name -> signature already on the prefix
        self.notice = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one upload at a time (thread loop vs final flush)
        self._uploading_step: int | None = None
        self._thread: threading.Thread | None = None
        self._skipped: set[tuple[str, int]] = set()

    # -- what is finished --------------------------------------------------------------
    def _marker_mode(self) -> bool:
        return self.finished_by == "marker" or (self.finished_by == "auto" and adapter_announced(self.folder))

    def _step_of(self, entry: Entry, marker: dict[str, Any] | None) -> int:
        if marker and marker.get("step") is not None:
            return int(marker["step"])
        from_name = step_from_name(entry.name)
        return from_name if from_name is not None else (self.committed_step or 0) + 1

    def _is_finished(self, entry: Entry, marker: dict[str, Any] | None, exited_ok: bool) -> bool:
        if marker is not None:
            return True
        if self._marker_mode():
            return False
        return exited_ok or self.settle.settled(entry)

    def candidates(self, *, exited_ok: bool = False) -> list[Candidate]:
        """Finished checkpoints not on the prefix yet, newest first."""
        out = []
        for entry in list_entries(self.folder):
            if self.uploaded.get(entry.name) == entry.signature:
                continue
            marker = read_marker(self.folder, entry.name)
            if not self._is_finished(entry, marker, exited_ok):
                continue
            out.append(Candidate(entry, self._step_of(entry, marker), marker))
        out.sort(key=lambda c: c.step, reverse=True)
        return out

    def _newer_marked_than(self, step: int) -> bool:
        for entry in list_entries(self.folder):
            marker = read_marker(self.folder, entry.name)
            if marker is not None and int(marker.get("step") or -1) > step \
                    and self.uploaded.get(entry.name) != entry.signature:
                return True
        return False

    # -- uploading ---------------------------------------------------------------------
    def _copy(self, local_path: str, remote_path: str) -> None:
        step = self._uploading_step
        last_check = time.monotonic()
        with open(local_path, "rb") as src, self.manager.fs.open(remote_path, "wb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                if self.notice.is_set() and step is not None and time.monotonic() - last_check > 0.2:
                    last_check = time.monotonic()
                    if self._newer_marked_than(step):
                        raise _Superseded()
                self.limiter.consume(len(chunk))
                dst.write(chunk)

    def upload_newest(self, *, exited_ok: bool = False) -> Checkpoint | None:
        """Commit the newest finished checkpoint if it is newer than the prefix's; ``None`` otherwise."""
        with self._lock:
            found = self.candidates(exited_ok=exited_ok)
            if not found:
                return None
            newest = found[0]
            if self.committed_step is not None and newest.step <= self.committed_step:
                key = (newest.entry.name, newest.step)
                if key not in self._skipped:
                    self._skipped.add(key)
                    emit("skipped", entry=newest.entry.name, step=newest.step, committed_step=self.committed_step,
                         reason="not newer than the committed checkpoint")
                return None
            return self._upload(newest)

    def _upload(self, candidate: Candidate) -> Checkpoint | None:
        entry, step, marker = candidate.entry, candidate.step, candidate.marker or {}
        started = time.monotonic()
        self._uploading_step = step
        try:
            names = self.manager.put_payload(step, entry.files(), copy=self._copy,
                                             max_concurrency=self.max_concurrency)
        except (_Superseded, CheckpointError, OSError) as e:
            self.manager.discard_uncommitted(step)
            emit("abandoned", entry=entry.name, step=step, reason=type(e).__name__ + (f": {e}" if str(e) else ""))
            return None
        finally:
            self._uploading_step = None
        if signature(entry.path) != entry.signature:
            self.manager.discard_uncommitted(step)
            emit("abandoned", entry=entry.name, step=step, reason="it changed while it was uploaded")
            return None
        checkpoint = self.manager.commit(
            step, names, total_steps=marker.get("total_steps"), epoch=marker.get("epoch"), attempt=self.attempt,
            reason=marker.get("reason") or "periodic",
        )
        self.uploaded[entry.name] = entry.signature
        self.committed_step = step
        size = sum(s for _, s, _ in entry.signature)
        emit("committed", entry=entry.name, step=step, bytes=size, seconds=round(time.monotonic() - started, 3),
             reason=checkpoint.record.reason)
        if self.on_commit:
            self.on_commit(checkpoint)
        return checkpoint

    # -- the background thread ---------------------------------------------------------
    def start(self) -> FolderUploader:
        self._thread = threading.Thread(target=self._run, name="folder-sync-uploader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.upload_newest()
            except Exception as e:  # keep syncing: one bad pass must not end the uploads
                emit("error", reason=f"{type(e).__name__}: {e}")
            interval = min(self.poll_seconds, 0.05) if self.notice.is_set() else self.poll_seconds
            self._wake.wait(interval)
            self._wake.clear()

    def on_notice(self) -> None:
        """The machine is about to go: no bandwidth cap, look at the folder right away and often."""
        self.notice.set()
        self.limiter.lift()
        self._wake.set()

    def finish(self, *, exited_ok: bool) -> Checkpoint | None:
        """Stop the thread and upload the newest finished checkpoint one last time."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        return self.upload_newest(exited_ok=exited_ok)

    def note_restored(self, names: list[str]) -> None:
        for name in names:
            self.uploaded[name] = signature(os.path.join(self.folder, name))


def restore_newest(manager: CheckpointManager, folder: str) -> tuple[Checkpoint | None, list[str]]:
    """Put the newest committed checkpoint's entries (or the warm start's) into ``folder``, marked finished."""
    latest = manager.resume_point()
    if latest is None:
        return None, []
    staging = os.path.join(folder, STATE_DIR, f"restore-{uuid.uuid4().hex}")
    manager.download(latest, staging)
    entries = sorted({name.split("/")[0] for name in latest.record.files})
    for name in entries:
        target = os.path.join(folder, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        os.replace(os.path.join(staging, name), target)
        mark_finished(folder, name, step=latest.step, total_steps=latest.record.total_steps,
                      epoch=latest.record.epoch, reason=latest.record.reason, restored=True)
    shutil.rmtree(staging, ignore_errors=True)
    return latest, entries


def _child_argv(command: list[str]) -> list[str]:
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", _CHILD_SHIM, str(os.getpid()), *command]
    return list(command)


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m airflow_spot_training.runtime.folder_sync",
                                description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="the local checkpoint folder")
    p.add_argument("--settle-seconds", type=float, default=10.0)
    p.add_argument("--finished-by", choices=("auto", "marker", "settle"), default="auto")
    p.add_argument("--keep-last", default="3", help="committed checkpoints kept under the prefix, or 'all'")
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--max-bytes-per-second", type=float, default=None)
    p.add_argument("--poll-seconds", type=float, default=1.0)
    p.add_argument("--nice", type=int, default=10,
                   help="lower this process's CPU priority by this much once the training started (0: keep)")
    p.add_argument("--aws-imds", action="store_true", help="also watch the AWS spot instance-action notice")
    p.add_argument("--gce-metadata", action="store_true", help="also watch the Compute Engine preempted flag")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("give the training command after --")
    return args


def run(args: argparse.Namespace) -> int:
    contract = read_contract()
    folder = os.path.abspath(args.dir)
    os.makedirs(folder, exist_ok=True)
    keep_last = None if args.keep_last == "all" else int(args.keep_last)
    manager = CheckpointManager(contract.checkpoint_uri, keep_last=keep_last)
    child: subprocess.Popen | None = None
    uploader: FolderUploader | None = None

    def on_notice(source: str) -> None:
        emit("notice", source=source)
        if uploader is not None:
            uploader.on_notice()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    watcher = InterruptionWatcher(handle_sigterm=True, on_notice=on_notice)
    watcher.start()  # the SIGTERM handler, before anything can take time
    restored, names = restore_newest(manager, folder)
    emit("restored", step=restored.step if restored else None, entries=names)
    uploader = FolderUploader(manager, folder, settle_seconds=args.settle_seconds, finished_by=args.finished_by,
                              max_concurrency=args.max_concurrency, max_bytes_per_second=args.max_bytes_per_second,
                              poll_seconds=args.poll_seconds, attempt=contract.attempt)
    uploader.note_restored(names)
    env = {**os.environ, CHECKPOINT_DIR: folder}
    child = subprocess.Popen(_child_argv(args.command), env=env, stdin=subprocess.DEVNULL)
    if args.nice:
        os.nice(args.nice)  # the uploads yield the CPU to the training (the child keeps its priority)
    if watcher.requested:  # a notice that came while restoring
        uploader.on_notice()
        child.send_signal(signal.SIGTERM)
    cloud_notices = InterruptionWatcher(handle_sigterm=False, aws_imds=args.aws_imds,
                                        gce_metadata=args.gce_metadata, on_notice=watcher.notify)
    cloud_notices.start()
    uploader.start()
    returncode = child.wait()
    emit("child-exited", code=exit_code(returncode))
    uploader.finish(exited_ok=returncode == 0)
    cloud_notices.stop()
    watcher.stop()
    return exit_code(returncode)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, RuntimeError, OSError) as e:
        emit("error", reason=f"{type(e).__name__}: {e}")
        return EXIT_WRAPPER_ERROR


if __name__ == "__main__":
    sys.exit(main())
