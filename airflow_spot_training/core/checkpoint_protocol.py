"""The checkpoint commit protocol, as names and records (no I/O here).

Layout under a checkpoint prefix::

    <prefix>/step-000000004200/...          payload files, written first
    <prefix>/step-000000004200/COMMIT.json  the commit record, written last
    <prefix>/_results/attempt-3.json        result records written by bootstraps
    <prefix>/_progress/attempt-3.json       the last step attempt 3 reported executing

A step directory counts only once its commit record exists and parses. Readers
trust nothing else; writers never rewrite a committed step.

Sharded steps (a gang of ``num_shards`` nodes, one shard per rank)::

    <prefix>/step-000000004200/shard-00001/...            rank 1's payload, written first
    <prefix>/step-000000004200/SHARD-00001-of-00002.json   rank 1's shard record, written last
    <prefix>/step-000000004200/COMMIT.json                 the step's commit record

Every rank writes its payload, then its shard record (one atomic write), then lists the
step's shard records: the rank that finds all ``num_shards`` of them, all written by the
same attempt (same token), writes the commit record, naming every shard's files. No rank
waits for another, so a node that is gone can never hold the others up: its shard is
missing, the step never gets a commit record, and readers keep the previous step. Two
ranks finishing together may both write the commit record: both write the same step and
files, and at least one of them sees every shard (each lists after its own write). Readers
keep the single-node rule (the commit record, and every file it names) and also check the
shard records, so a step with a missing shard is never resumed from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

COMMIT_FILE = "COMMIT.json"
STEP_DIR_RE = re.compile(r"^step-(\d{12})$")
RESULTS_DIR = "_results"
PROGRESS_DIR = "_progress"
PROTOCOL_VERSION = 1
SHARD_RECORD_RE = re.compile(r"^SHARD-(\d{5})-of-(\d{5})\.json$")


def step_dir_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"checkpoint step must be 0 or more, got {step}")
    return f"step-{step:012d}"


def parse_step_dir(name: str) -> int | None:
    m = STEP_DIR_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CommitRecord:
    """What a committed checkpoint says about itself.

    :param step: the training step the checkpoint was taken after.
    :param total_steps: the planned number of steps, when known (gives progress).
    :param committed_at: epoch seconds of the commit.
    :param files: payload file names, relative to the step directory.
    :param epoch: the epoch in progress, when the training has epochs.
    :param attempt: the attempt that wrote it.
    :param reason: ``periodic``, ``interruption`` or ``final``.
    :param fingerprint: a digest of the configuration a resume must match.
    :param token: the token of the attempt that wrote it (``SPOT_TRAINING_TOKEN``).
    :param num_shards: for a gang's step, how many shards (one per rank) it has; ``None``
        for a single-node step.
    """

    step: int
    committed_at: float
    files: list[str] = field(default_factory=list)
    total_steps: int | None = None
    epoch: int | None = None
    attempt: int | None = None
    reason: str = "periodic"
    fingerprint: str | None = None
    token: str | None = None
    num_shards: int | None = None
    version: int = PROTOCOL_VERSION

    @property
    def sharded(self) -> bool:
        return bool(self.num_shards) and self.num_shards > 1  # type: ignore[operator]

    def to_json(self) -> str:
        data = asdict(self)
        if data["num_shards"] is None:  # single-node records stay as they were
            del data["num_shards"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CommitRecord:
        """Parse a commit record; ``ValueError`` says what is wrong with a malformed one."""
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a commit record is a JSON object, not {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        record = cls(**{k: v for k, v in data.items() if k in known})
        problems = [name for name, ok in (
            ("step", isinstance(record.step, int) and not isinstance(record.step, bool) and record.step >= 0),
            ("committed_at", isinstance(record.committed_at, (int, float)) and not isinstance(record.committed_at, bool)),
            ("files", isinstance(record.files, list) and all(isinstance(f, str) for f in record.files)),
            ("total_steps", record.total_steps is None or isinstance(record.total_steps, int)),
            ("num_shards", record.num_shards is None or (isinstance(record.num_shards, int)
                                                         and not isinstance(record.num_shards, bool)
                                                         and record.num_shards >= 1)),
        ) if not ok]
        if problems:
            raise ValueError(f"fields of the wrong type: {', '.join(problems)}")
        return record


def shard_dir_name(rank: int) -> str:
    """The folder of rank ``rank``'s payload inside a sharded step directory."""
    if rank < 0:
        raise ValueError(f"a shard's rank must be 0 or more, got {rank}")
    return f"shard-{rank:05d}"


def shard_record_name(rank: int, num_shards: int) -> str:
    """The file name of rank ``rank``'s shard record inside a step directory."""
    if not 0 <= rank < num_shards:
        raise ValueError(f"rank {rank} is not in a gang of {num_shards}")
    return f"SHARD-{rank:05d}-of-{num_shards:05d}.json"


def parse_shard_record_name(name: str) -> tuple[int, int] | None:
    """``(rank, num_shards)`` of a shard record's file name, or ``None``."""
    match = SHARD_RECORD_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class ShardRecord:
    """What one rank says about its shard of a step: written after its payload, before any commit.

    :param step: the step.
    :param rank: the rank that wrote it.
    :param num_shards: the size of the gang.
    :param files: the shard's payload names, relative to the step directory (``shard-00001/state.pt``).
    :param token: the attempt's token; a commit needs every shard from the same attempt.
    """

    step: int
    rank: int
    num_shards: int
    committed_at: float
    files: list[str] = field(default_factory=list)
    total_steps: int | None = None
    epoch: int | None = None
    attempt: int | None = None
    reason: str = "periodic"
    fingerprint: str | None = None
    token: str | None = None
    version: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardRecord:
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a shard record is a JSON object, not {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        record = cls(**{k: v for k, v in data.items() if k in known})
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (record.step, record.rank,
                                                                              record.num_shards))
        if not whole or not 0 <= record.rank < record.num_shards:
            raise ValueError("step, rank and num_shards must be integers with 0 <= rank < num_shards")
        if not (isinstance(record.files, list) and all(isinstance(f, str) for f in record.files)):
            raise ValueError("files must be a list of names")
        return record


def complete_gang(records: Iterable[ShardRecord], num_shards: int, token: str | None) -> list[ShardRecord] | None:
    """The shard records of a complete step, ordered by rank, or ``None`` while one is missing.

    Complete: one record per rank ``0 .. num_shards - 1``, every one for a gang of
    ``num_shards`` and written by the attempt ``token`` (a shard left by an earlier attempt
    that reached the same step does not complete a later attempt's step).
    """
    by_rank = {r.rank: r for r in records if r.num_shards == num_shards and r.token == token}
    if sorted(by_rank) != list(range(num_shards)):
        return None
    return [by_rank[rank] for rank in range(num_shards)]


def merged_commit(shards: list[ShardRecord], committed_at: float) -> CommitRecord:
    """The commit record of a complete sharded step: rank 0's facts, every shard's files."""
    first = shards[0]
    files = sorted(name for shard in shards for name in shard.files)
    return CommitRecord(step=first.step, committed_at=committed_at, files=files, total_steps=first.total_steps,
                        epoch=first.epoch, attempt=first.attempt, reason=first.reason,
                        fingerprint=first.fingerprint, token=first.token, num_shards=len(shards))


def newest_committed(steps_with_commit: Iterable[int]) -> int | None:
    steps = list(steps_with_commit)
    return max(steps) if steps else None


def result_record_name(attempt: int) -> str:
    return f"{RESULTS_DIR}/attempt-{attempt}.json"


def progress_record_name(attempt: int) -> str:
    return f"{PROGRESS_DIR}/attempt-{attempt}.json"
