"""The checkpoint commit protocol, as names and records (no I/O here).

Layout under a checkpoint prefix::

    <prefix>/step-000000004200/...          payload files, written first
    <prefix>/step-000000004200/COMMIT.json  the commit record, written last
    <prefix>/_results/attempt-3.json        result records written by bootstraps

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
    """

    step: int
    committed_at: float
    files: list[str] = field(default_factory=list)
    total_steps: int | None = None
    epoch: int | None = None
    attempt: int | None = None
    reason: str = "periodic"
    fingerprint: str | None = None
    version: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CommitRecord:
        data: dict[str, Any] = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def newest_committed(steps_with_commit: Iterable[int]) -> int | None:
    steps = list(steps_with_commit)
    return max(steps) if steps else None


def result_record_name(attempt: int) -> str:
    return f"{RESULTS_DIR}/attempt-{attempt}.json"
