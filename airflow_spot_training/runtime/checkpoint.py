"""Atomic checkpoints over any fsspec filesystem (local paths, ``s3://``, ``gs://``).

Imports neither Airflow nor a cloud SDK: fsspec resolves ``s3://`` to s3fs and
``gs://`` to gcsfs when they are installed in the training image.

Protocol (see :mod:`airflow_spot_training.core.checkpoint_protocol`): the payload
files of step N are written under ``step-N/`` first; the commit record
``step-N/COMMIT.json`` is written last, in one atomic operation (a rename on
local disks, a single PUT on object stores). :meth:`CheckpointManager.latest`
only ever returns a step whose commit record exists and parses, so a writer
killed at any point leaves the previous committed checkpoint in charge.
Retention removes a step's commit record before its payload, so a half-deleted
step is never mistaken for a committed one.

In a gang (``num_shards`` > 1, read from the contract by default), every rank's
:meth:`CheckpointManager.save` writes that rank's shard (``step-N/shard-R/...``, then its
shard record); the step is committed, by whichever rank completes it, only once every
rank's shard of that step, from the same attempt, is there. :meth:`latest` is the newest
step every rank committed; :meth:`open_file` reads this rank's own shard of it.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Callable

import fsspec

from airflow_spot_training.core import contract as spot_contract
from airflow_spot_training.core.checkpoint_protocol import (
    COMMIT_FILE,
    CommitRecord,
    ShardRecord,
    complete_gang,
    merged_commit,
    parse_shard_record_name,
    parse_step_dir,
    progress_record_name,
    result_record_name,
    shard_dir_name,
    shard_record_name,
    step_dir_name,
)

#: seconds between two progress records on an object store (a local disk gets one per step);
#: SPOT_TRAINING_PROGRESS_SECONDS overrides it
REMOTE_PROGRESS_SECONDS = 5.0
PROGRESS_SECONDS_ENV = "SPOT_TRAINING_PROGRESS_SECONDS"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, read, or is unusable for this run."""


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: its step directory and commit record.

    ``warm_start`` marks a checkpoint of an earlier run (the contract's ``init_uri``) rather
    than one under this run's own prefix.
    """

    uri: str
    record: CommitRecord
    #: ranks whose shard of this step is not written yet (a gang's save returns before the
    #: other ranks have written theirs); empty once the step is committed
    pending_shards: tuple[int, ...] = ()
    warm_start: bool = False

    @property
    def committed(self) -> bool:
        return not self.pending_shards

    @property
    def step(self) -> int:
        return self.record.step

    def file_uri(self, name: str) -> str:
        return posixpath.join(self.uri, name)


class CheckpointManager:
    """Save and find checkpoints under one prefix.

    :param uri: the checkpoint prefix (a local path or an fsspec URL).
    :param keep_last: how many committed checkpoints to keep (older ones are removed
        after each successful save). ``None`` keeps all.
    :param every_steps: :meth:`should_save` answers yes every this many steps.
    :param every_seconds: :meth:`should_save` answers yes when this much wall-clock
        time passed since the last save.
    :param storage_options: passed to fsspec (credentials, endpoint URL, ...).
    :param attempt: the attempt this process is; default: ``SPOT_TRAINING_ATTEMPT`` from the
        environment contract. Progress records are kept per attempt.
    :param token: the attempt's token, stamped on commit and progress records; default:
        ``SPOT_TRAINING_TOKEN`` from the environment contract.
    :param progress_every_seconds: at most one progress record per this many seconds;
        default: every step on a local disk, every 5 s on an object store.
    :param rank: this node's rank in a gang; default: ``SPOT_TRAINING_NODE_RANK`` from the
        contract (0 on a single node).
    :param num_shards: the gang's size, one shard per rank; default: ``SPOT_TRAINING_NUM_NODES``
        from the contract (1: single-node checkpoints, as before).
    :param init_uri: a committed checkpoint of an earlier run (its ``step-N`` directory) to
        warm-start from while this prefix holds none; default: ``SPOT_TRAINING_INIT_URI`` from
        the environment contract (set by the operator's ``init_from=``).

    Progress: :meth:`should_save` (called after every step in the usual loop) and
    :meth:`save` record the step the training has reached under
    ``<prefix>/_progress/attempt-N.json``, so that the operator knows how far an attempt
    got beyond its last checkpoint when a preemption cut it short (``recomputed_steps``).
    """

    def __init__(
        self,
        uri: str,
        *,
        keep_last: int | None = 3,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        storage_options: dict[str, Any] | None = None,
        attempt: int | None = None,
        token: str | None = None,
        progress_every_seconds: float | None = None,
        rank: int | None = None,
        num_shards: int | None = None,
        init_uri: str | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be 1 or more (or None to keep all), got {keep_last}")
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be 1 or more, got {every_steps}")
        self.uri = uri.rstrip("/")
        self.keep_last = keep_last
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **self.storage_options)
        self.root = self.root.rstrip("/")
        self._last_save_time = time.monotonic()
        self._last_save_step: int | None = None
        env_attempt = os.environ.get(spot_contract.ATTEMPT, "")
        self.attempt = attempt if attempt is not None else (int(env_attempt) if env_attempt.isdigit() else None)
        self.token = token if token is not None else (os.environ.get(spot_contract.TOKEN) or None)
        self.progress_every_seconds = _progress_period(progress_every_seconds, self._is_local())
        self._progress_step: int | None = None
        self._progress_written_at = float("-inf")
        self.init_uri = init_uri if init_uri is not None else (os.environ.get(spot_contract.INIT_URI) or None)
        self.rank = rank if rank is not None else _env_int(spot_contract.NODE_RANK, 0)
        self.num_shards = num_shards if num_shards is not None else _env_int(spot_contract.NUM_NODES, 1)
        if not 0 <= self.rank < max(1, self.num_shards):
            raise ValueError(f"rank {self.rank} is not in a gang of {self.num_shards} (0 <= rank < num_shards)")

    @property
    def sharded(self) -> bool:
        """Whether this manager writes one shard of a gang's steps (``num_shards`` > 1)."""
        return self.num_shards > 1

    # -- paths -----------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _uri_of(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("file", "local"):
            return path
        return f"{protocol}://{path}"

    # -- reading ---------------------------------------------------------------------
    def _entries(self) -> list[str]:
        """The prefix's entries as they are now (object-store listings are cached by fsspec)."""
        self._forget_listings()
        return self.fs.ls(self.root, detail=False)

    def _forget_listings(self) -> None:
        """Drop fsspec's cached listings of the prefix and of everything under it.

        ``invalidate_cache(root)`` forgets the root and its parents only; a step directory
        listed earlier by this process (fsspec shares one filesystem object per process) would
        still say which files it holds and their ETags, after another writer changed them.
        """
        self.fs.invalidate_cache(self.root)
        cache = getattr(self.fs, "dircache", None)
        if cache is not None:
            below = self.root.rstrip("/") + "/"
            for path in [cached for cached in list(cache) if cached.startswith(below)]:
                cache.pop(path, None)

    def committed(self) -> list[Checkpoint]:
        """All committed checkpoints, oldest first."""
        try:
            entries = self._entries()
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            step = parse_step_dir(entry)
            if step is None:
                continue
            record = self._read_commit(step)
            if record is not None:
                out.append(Checkpoint(self._uri_of(self._path(step_dir_name(step))), record))
        out.sort(key=lambda c: c.step)
        return out

    def _read_commit(self, step: int) -> CommitRecord | None:
        path = self._path(step_dir_name(step), COMMIT_FILE)
        try:
            # one GET of what is there now: a file object would check it against fsspec's cached
            # listing (its ETag on S3) and fail if another writer's PUT came in between
            record = CommitRecord.from_json(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("ignoring the malformed commit record %s (%s); that step is not resumed from", path, e)
            return None
        if record.step != step:
            log.warning("ignoring commit record at %s: it names step %s", path, record.step)
            return None
        for name in record.files:
            if not self.fs.exists(self._path(step_dir_name(step), name)):
                log.warning("ignoring checkpoint step %s: payload file %s is missing", step, name)
                return None
        if record.sharded:
            assert record.num_shards is not None
            for rank in range(record.num_shards):
                if not self.fs.exists(self._path(step_dir_name(step), shard_record_name(rank, record.num_shards))):
                    log.warning("ignoring checkpoint step %s: the shard of rank %s is missing", step, rank)
                    return None
        return record

    def latest(self) -> Checkpoint | None:
        """The newest committed checkpoint, never a partial one; ``None`` if there is none."""
        try:
            entries = self._entries()
        except FileNotFoundError:
            return None
        steps = sorted((s for s in map(parse_step_dir, entries) if s is not None), reverse=True)
        for step in steps:
            record = self._read_commit(step)
            if record is not None:
                return Checkpoint(self._uri_of(self._path(step_dir_name(step))), record)
        return None

    def resume_point(self) -> Checkpoint | None:
        """Where a training (re)starts: the newest committed checkpoint of this prefix, else the
        warm-start checkpoint (``init_uri``), else ``None`` (a fresh start).

        Raise :class:`CheckpointError` when a warm start is asked for and its checkpoint cannot be read.
        """
        return self.latest() or self.warm_start()

    def warm_start(self) -> Checkpoint | None:
        """The warm-start checkpoint named by ``init_uri``; ``None`` when there is none to use."""
        if not self.init_uri:
            return None
        return read_checkpoint(self.init_uri, self.storage_options)

    def _step_location(self, checkpoint: Checkpoint) -> tuple[Any, str]:
        """(filesystem, path) of a checkpoint's step directory: this prefix's, or a warm start's own."""
        if not checkpoint.warm_start:
            return self.fs, self._path(step_dir_name(checkpoint.step))
        fs, path = fsspec.core.url_to_fs(checkpoint.uri, **self.storage_options)
        return fs, path.rstrip("/")

    def open_file(self, checkpoint: Checkpoint, name: str) -> IO[bytes]:
        """Open a payload file of ``checkpoint``; of a gang's step, this rank's own shard's file."""
        fs, step_path = self._step_location(checkpoint)
        return fs.open(posixpath.join(step_path, self._own_name(checkpoint, name)), "rb")

    def _own_name(self, checkpoint: Checkpoint, name: str) -> str:
        """``name`` as stored in ``checkpoint``: under this rank's shard folder when the step is sharded."""
        shards = checkpoint.record.num_shards or 1
        if shards != max(1, self.num_shards):
            raise CheckpointError(
                f"checkpoint step {checkpoint.step} under {self.uri} was written by a gang of {shards} node(s), "
                f"but this training runs on {max(1, self.num_shards)}: run it with num_nodes={shards}, or give "
                "the task a new checkpoint_prefix to start from scratch."
            )
        return posixpath.join(shard_dir_name(self.rank), name) if shards > 1 else name

    # -- writing ---------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        """Whether the cadence (by steps or by wall-clock time) asks for a save after ``step``.

        Also records ``step`` as the training's progress (see :meth:`report_progress`).
        """
        self.report_progress(step)
        if self.every_steps and step % self.every_steps == 0 and step != self._last_save_step:
            return True
        if self.every_seconds is not None and time.monotonic() - self._last_save_time >= self.every_seconds:
            return True
        return False

    def save(
        self,
        step: int,
        files: dict[str, bytes | Callable[[IO[bytes]], None]],
        *,
        total_steps: int | None = None,
        epoch: int | None = None,
        attempt: int | None = None,
        reason: str = "periodic",
        fingerprint: str | None = None,
    ) -> Checkpoint:
        """Write ``files`` as checkpoint ``step`` and commit it.

        Each value is either bytes or a function that writes to a binary file object
        (``lambda f: torch.save(state, f)``). If step ``step`` is already committed,
        it is kept as it is and returned: committed checkpoints are never rewritten.
        """
        if not files:
            raise ValueError("a checkpoint needs at least one payload file")
        for name in files:
            if name == COMMIT_FILE or "/" in name or name.startswith("."):
                raise ValueError(f"invalid checkpoint file name {name!r}")
        existing = self._read_commit(step)
        if existing is not None:
            return Checkpoint(self._uri_of(self._path(step_dir_name(step))), existing)
        step_path = self._path(step_dir_name(step))
        names = {self._shard_name(name): payload for name, payload in files.items()}
        try:
            self._forget_foreign_shard(step)
            self.fs.makedirs(posixpath.dirname(posixpath.join(step_path, next(iter(names)))), exist_ok=True)
            for name, payload in names.items():
                self._write(posixpath.join(step_path, name), payload)
        except OSError as e:
            raise CheckpointError(f"could not write checkpoint step {step} under {self.uri}: {e}") from e
        return self.commit(step, sorted(names), total_steps=total_steps, epoch=epoch, attempt=attempt,
                           reason=reason, fingerprint=fingerprint)

    def put_payload(
        self,
        step: int,
        sources: dict[str, str],
        *,
        copy: Callable[[str, str], None] | None = None,
        max_concurrency: int = 1,
    ) -> list[str]:
        """Upload local files as the payload of step ``step``; commit it with :meth:`commit`.

        :param sources: payload name (relative, ``/``-separated: ``checkpoint-500/model.safetensors``)
            -> local file path.
        :param copy: ``copy(local_path, remote_path)``; default: the filesystem's ``put_file``.
        :param max_concurrency: files uploaded at once.
        :return: the payload names, for the commit record.
        """
        if not sources:
            raise ValueError("a checkpoint needs at least one payload file")
        for name in sources:
            _check_nested_name(name)
        sources = {self._shard_name(name): path for name, path in sources.items()}
        step_path = self._path(step_dir_name(step))
        copy = copy or self.fs.put_file
        if self.sharded:
            self._forget_foreign_shard(step)

        def put(name: str) -> None:
            remote = posixpath.join(step_path, name)
            self.fs.makedirs(posixpath.dirname(remote), exist_ok=True)
            copy(sources[name], remote)

        try:
            self.fs.makedirs(step_path, exist_ok=True)
            if max_concurrency <= 1 or len(sources) == 1:
                for name in sources:
                    put(name)
            else:
                with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="checkpoint-put") as pool:
                    for future in [pool.submit(put, name) for name in sources]:
                        future.result()
        except OSError as e:
            raise CheckpointError(f"could not upload checkpoint step {step} to {self.uri}: {e}") from e
        return sorted(sources)

    def commit(
        self,
        step: int,
        files: list[str],
        *,
        total_steps: int | None = None,
        epoch: int | None = None,
        attempt: int | None = None,
        reason: str = "periodic",
        fingerprint: str | None = None,
    ) -> Checkpoint:
        """Write the commit record of step ``step`` (its payload ``files`` already written), then prune.

        In a gang: write this rank's shard record, and the commit record if that completes the step.
        """
        step_path = self._path(step_dir_name(step))
        if self.sharded:
            shard = ShardRecord(step=step, rank=self.rank, num_shards=self.num_shards, committed_at=time.time(),
                                files=sorted(files), total_steps=total_steps, epoch=epoch,
                                attempt=attempt if attempt is not None else self.attempt, reason=reason,
                                fingerprint=fingerprint, token=self.token)
            return self._commit_shard(step_path, shard)
        record = CommitRecord(
            step=step,
            committed_at=time.time(),
            files=sorted(files),
            total_steps=total_steps,
            epoch=epoch,
            attempt=attempt if attempt is not None else self.attempt,
            reason=reason,
            fingerprint=fingerprint,
            token=self.token,
        )
        try:
            self._commit(step_path, record)
        except OSError as e:
            raise CheckpointError(f"could not commit checkpoint step {step} under {self.uri}: {e}") from e
        return self._committed(step_path, record)

    def _committed(self, step_path: str, record: CommitRecord) -> Checkpoint:
        self._last_save_time = time.monotonic()
        self._last_save_step = record.step
        self._apply_retention()
        self.report_progress(record.step, force=True)
        return Checkpoint(self._uri_of(step_path), record)

    # -- shards of a gang's steps ----------------------------------------------------------
    def _shard_name(self, name: str) -> str:
        return posixpath.join(shard_dir_name(self.rank), name) if self.sharded else name

    def _forget_foreign_shard(self, step: int) -> None:
        """Drop this rank's shard record of ``step`` left by another attempt, before rewriting the shard.

        The step is not committed (else the save returned early), so nothing trusts it; removing
        the record first means no rank can complete the step with this shard half rewritten.
        """
        path = self._path(step_dir_name(step), shard_record_name(self.rank, self.num_shards))
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    def _commit_shard(self, step_path: str, shard: ShardRecord) -> Checkpoint:
        try:
            self._put_atomic(posixpath.join(step_path, shard_record_name(shard.rank, shard.num_shards)),
                             shard.to_json().encode())
            shards = complete_gang(self._shard_records(step_path), shard.num_shards, shard.token)
            record = merged_commit(shards, time.time()) if shards is not None else None
            if record is not None:
                self._commit(step_path, record)
        except OSError as e:
            raise CheckpointError(f"could not commit the shard of rank {shard.rank} of checkpoint step "
                                  f"{shard.step} under {self.uri}: {e}") from e
        if record is None:  # another rank's shard is still to come: that rank commits the step
            self._last_save_time, self._last_save_step = time.monotonic(), shard.step
            self.report_progress(shard.step, force=True)
            pending = CommitRecord(step=shard.step, committed_at=shard.committed_at, files=shard.files,
                                   total_steps=shard.total_steps, epoch=shard.epoch, attempt=shard.attempt,
                                   reason=shard.reason, fingerprint=shard.fingerprint, token=shard.token,
                                   num_shards=shard.num_shards)
            missing = tuple(sorted(set(range(shard.num_shards)) - {s.rank for s in self._shard_records(step_path)
                                                                   if s.token == shard.token}))
            return Checkpoint(self._uri_of(step_path), pending, pending_shards=missing or (shard.rank,))
        return self._committed(step_path, record)

    def _shard_records(self, step_path: str) -> list[ShardRecord]:
        self.fs.invalidate_cache(step_path)
        records = []
        for entry in self.fs.ls(step_path, detail=False):
            if parse_shard_record_name(entry) is None:
                continue
            try:
                with self.fs.open(entry, "rb") as f:
                    records.append(ShardRecord.from_json(f.read()))
            except FileNotFoundError:  # removed by its rank while we listed: it is being rewritten
                continue
            except (ValueError, TypeError) as e:
                log.warning("ignoring the malformed shard record %s (%s)", entry, e)
        return records

    # -- progress ----------------------------------------------------------------------
    def report_progress(self, step: int, *, force: bool = False) -> None:
        """Record that the training has executed ``step`` (never fails the training).

        Written at most every ``progress_every_seconds`` unless ``force``; only for a
        process launched by a backend (it needs the attempt number).
        """
        if self.attempt is None or step == self._progress_step or self.rank != 0:
            return  # in a gang, rank 0 speaks for all
        now = time.monotonic()
        if not force and now - self._progress_written_at < self.progress_every_seconds:
            return
        record = json.dumps({"step": step, "token": self.token, "at": time.time()}).encode()
        try:
            self._put_small(self._path(progress_record_name(self.attempt)), record)
        except OSError as e:  # progress is a report, not a duty: the training goes on
            log.debug("could not write the progress record: %s", e)
            return
        self._progress_step, self._progress_written_at = step, now

    def _put_small(self, path: str, data: bytes) -> None:
        """Replace a small object whole: a rename on local disks, one PUT on object stores."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self._is_local():
            self.fs.pipe_file(path, data)
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def discard_uncommitted(self, step: int) -> None:
        """Remove what an abandoned write left of step ``step``; a committed step is left alone."""
        if self._read_commit(step) is not None:
            return
        try:
            self.fs.rm(self._path(step_dir_name(step)), recursive=True)
        except FileNotFoundError:
            pass

    def download(self, checkpoint: Checkpoint, local_dir: str) -> list[str]:
        """Copy a committed checkpoint's payload files into ``local_dir``; return the local paths."""
        fs, step_path = self._step_location(checkpoint)
        written = []
        own = self._own_name(checkpoint, "")
        for name in checkpoint.record.files:
            _check_nested_name(name)
            if not name.startswith(own):
                continue  # another rank's shard
            target = os.path.join(local_dir, *name[len(own):].split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(posixpath.join(step_path, name), target)
            written.append(target)
        return written

    def _write(self, path: str, payload: bytes | Callable[[IO[bytes]], None]) -> None:
        with self.fs.open(path, "wb") as f:
            if isinstance(payload, (bytes, bytearray, memoryview)):
                f.write(bytes(payload))
            else:  # streamed: no second copy of a large state in memory
                payload(f)

    def _commit(self, step_path: str, record: CommitRecord) -> None:
        self._put_atomic(posixpath.join(step_path, COMMIT_FILE), record.to_json().encode())

    def _put_atomic(self, final: str, data: bytes) -> None:
        """Write a record durably in one atomic step: fsync and rename locally, one PUT on object stores."""
        step_path = posixpath.dirname(final)
        name = posixpath.basename(final)
        if self._is_local():
            tmp = posixpath.join(step_path, f".{name}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)  # atomic on POSIX
            _fsync_dir(step_path)
        else:
            # one PUT: object stores make a single object appear whole or not at all
            self.fs.pipe_file(final, data)

    def _is_local(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("file", "local")

    def _apply_retention(self) -> None:
        if self.keep_last is None:
            return
        committed = self.committed()
        for old in committed[: -self.keep_last]:
            self.remove(old.step)

    def remove(self, step: int) -> None:
        """Delete a checkpoint: the commit record first, so it stops counting at once."""
        step_path = self._path(step_dir_name(step))
        try:
            self.fs.rm(posixpath.join(step_path, COMMIT_FILE))
        except FileNotFoundError:
            pass
        try:
            self.fs.rm(step_path, recursive=True)
        except FileNotFoundError:
            pass

    # -- result records (written by bootstraps; backends read them with
    #    runtime.results.read_json_record) ----------------------------------------------
    def write_result(self, attempt: int, result: dict[str, Any]) -> None:
        self.fs.makedirs(self._path("_results"), exist_ok=True)
        self.fs.pipe_file(self._path(result_record_name(attempt)), json.dumps(result).encode())

    def check_writable(self) -> None:
        """Write and delete a probe object; raise :class:`CheckpointError` naming the prefix."""
        probe = self._path(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm(probe)
        except Exception as e:  # any backend error means the same thing to the user
            raise CheckpointError(
                f"checkpoint_prefix {self.uri!r} is not writable ({type(e).__name__}: {e}). "
                "Point checkpoint_prefix (or [spot_training] checkpoint_base_uri) at a location "
                "the workers and the training can write to."
            ) from e


def read_checkpoint(uri: str, storage_options: dict[str, Any] | None = None) -> Checkpoint:
    """The committed checkpoint whose step directory is ``uri`` (``<prefix>/step-N``), as a warm start.

    Raise :class:`CheckpointError` naming the URI when it is not a committed checkpoint
    (no commit record, a malformed one, or a payload file missing).
    """
    prefix, _, name = uri.rstrip("/").rpartition("/")
    step = parse_step_dir(name)
    if step is None or not prefix:
        raise CheckpointError(f"warm-start checkpoint {uri!r} is not a checkpoint step directory "
                              "(<prefix>/step-NNNNNNNNNNNN); give a step directory or a checkpoint prefix.")
    manager = CheckpointManager(prefix, keep_last=None, storage_options=storage_options, attempt=0, token="",
                                init_uri="")
    record = manager._read_commit(step)
    if record is None:
        raise CheckpointError(f"warm-start checkpoint {uri!r} has no valid commit record (missing, malformed, or "
                              "a payload file is gone); it cannot be started from.")
    return Checkpoint(manager._uri_of(manager._path(step_dir_name(step))), record, warm_start=True)


def _progress_period(configured: float | None, local: bool) -> float:
    if configured is not None:
        return max(0.0, float(configured))
    from_env = os.environ.get(PROGRESS_SECONDS_ENV)
    if from_env:
        try:
            return max(0.0, float(from_env))
        except ValueError:
            log.warning("ignoring %s=%r: not a number of seconds", PROGRESS_SECONDS_ENV, from_env)
    return 0.0 if local else REMOTE_PROGRESS_SECONDS

def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def _check_nested_name(name: str) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == COMMIT_FILE:
        raise ValueError(f"invalid checkpoint file name {name!r}")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
