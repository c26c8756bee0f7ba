"""The checkpoint commit protocol, as names and records (no I/O here).

Layout under a checkpoint prefix::

    <prefix>/step-000000004200/...          payload files, written first
    <prefix>/step-000000004200/COMMIT.json  the commit record, written last
    <prefix>/_results/attempt-3.json        result records written by bootstraps
    <prefix>/_progress/attempt-3.json       the last step attempt 3 reported executing

A step directory counts only once its commit record exists and parses. Readers
trust nothing else; writers never rewrite a committed step.
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
    version: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

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
        ) if not ok]
        if problems:
            raise ValueError(f"fields of the wrong type: {', '.join(problems)}")
        return record


def newest_committed(steps_with_commit: Iterable[int]) -> int | None:
    steps = list(steps_with_commit)
    return max(steps) if steps else None


def result_record_name(attempt: int) -> str:
    return f"{RESULTS_DIR}/attempt-{attempt}.json"


def progress_record_name(attempt: int) -> str:
    return f"{PROGRESS_DIR}/attempt-{attempt}.json"
