"""The synced checkpoint folder, as configuration and a command line (no I/O here).

A training that only knows a local folder (a Hugging Face ``Trainer``'s ``output_dir``,
a Lightning checkpoint directory, a plain script writing files) resumes on any backend
when its command runs under the folder-sync wrapper::

    python -m airflow_spot_training.runtime.folder_sync --dir /mnt/checkpoint [options] -- <command>

The wrapper (:mod:`airflow_spot_training.runtime.folder_sync`) restores the newest
committed checkpoint from the prefix into the folder, runs the command with
``SPOT_TRAINING_CHECKPOINT_DIR`` set, uploads each finished checkpoint in the background
with the commit protocol, flushes the newest one on the interruption notice, and exits
with the command's code. A backend only has to wrap its command: :meth:`FolderSync.wrap`
for an argument list (local processes, container commands), :meth:`FolderSync.wrap_shell`
for a shell command line (VM bootstrap scripts).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, fields
from typing import Any

#: where VM backends (EC2, Compute Engine) and containers put the folder by default
VM_CHECKPOINT_DIR = "/mnt/checkpoint"
#: what the local backend calls the per-attempt folder inside the attempt directory
LOCAL_CHECKPOINT_DIR_NAME = "checkpoint"
WRAPPER_MODULE = "airflow_spot_training.runtime.folder_sync"
FINISHED_BY = ("auto", "marker", "settle")


class FolderSyncConfigError(ValueError):
    """A ``checkpoint_sync`` setting is invalid; the message names it and the fix."""


@dataclass(frozen=True)
class FolderSync:
    """How the synced checkpoint folder behaves. JSON-safe, so a backend can carry it.

    :param local_dir: the folder the training writes checkpoints into; ``None`` lets the
        backend choose (``/mnt/checkpoint`` on VMs, a per-attempt folder locally).
    :param settle_seconds: a checkpoint that no adapter marked as finished counts as
        finished once nothing in it changed for this long (plain scripts).
    :param finished_by: ``auto`` (adapter markers when an adapter announced itself, else
        the settle interval), ``marker`` (only marked checkpoints), or ``settle``.
    :param keep_last: committed checkpoints kept under the prefix (``None``: all).
    :param max_concurrency: files of one checkpoint uploaded at once.
    :param max_bytes_per_second: upload bandwidth cap (``None``: no cap). Lifted on the
        interruption notice, when the flush must beat the hard kill.
    :param poll_seconds: how often the uploader looks at the folder.
    """

    local_dir: str | None = None
    settle_seconds: float = 10.0
    finished_by: str = "auto"
    keep_last: int | None = 3
    max_concurrency: int = 4
    max_bytes_per_second: float | None = None
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_value(cls, value: Any) -> FolderSync | None:
        """Accept ``None``/``False`` (off), ``True`` (defaults), a dict of settings, or an instance."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise FolderSyncConfigError(
                    f"checkpoint_sync has unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
                )
            return cls(**value)
        raise FolderSyncConfigError(
            f"checkpoint_sync={value!r} is invalid: pass True, a dict of settings, or FolderSync(...)."
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.local_dir is not None and (not isinstance(self.local_dir, str) or not self.local_dir.startswith("/")):
            raise FolderSyncConfigError(
                f"checkpoint_sync local_dir={self.local_dir!r} must be an absolute path (or None for the default)."
            )
        if self.finished_by not in FINISHED_BY:
            raise FolderSyncConfigError(
                f"checkpoint_sync finished_by={self.finished_by!r} is invalid: choose one of {', '.join(FINISHED_BY)}."
            )
        _positive("settle_seconds", self.settle_seconds, allow_zero=True)
        _positive("poll_seconds", self.poll_seconds)
        if self.max_bytes_per_second is not None:
            _positive("max_bytes_per_second", self.max_bytes_per_second)
        if not isinstance(self.max_concurrency, int) or isinstance(self.max_concurrency, bool) \
                or self.max_concurrency < 1:
            raise FolderSyncConfigError(
                f"checkpoint_sync max_concurrency={self.max_concurrency!r} must be a positive integer."
            )
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or self.keep_last < 1):
            raise FolderSyncConfigError(
                f"checkpoint_sync keep_last={self.keep_last!r} must be 1 or more, or None to keep all."
            )

    # -- command lines -----------------------------------------------------------------
    def wrapper_args(self, local_dir: str, *, aws_imds: bool = False, gce_metadata: bool = False) -> list[str]:
        """The wrapper's own options (everything between the module name and ``--``)."""
        args = [
            "--dir", local_dir,
            "--settle-seconds", repr(float(self.settle_seconds)),
            "--finished-by", self.finished_by,
            "--keep-last", "all" if self.keep_last is None else str(self.keep_last),
            "--max-concurrency", str(self.max_concurrency),
            "--poll-seconds", repr(float(self.poll_seconds)),
        ]
        if self.max_bytes_per_second is not None:
            args += ["--max-bytes-per-second", repr(float(self.max_bytes_per_second))]
        if aws_imds:
            args.append("--aws-imds")
        if gce_metadata:
            args.append("--gce-metadata")
        return args

    def wrap(self, command: list[str], *, python: str, default_dir: str = VM_CHECKPOINT_DIR,
             aws_imds: bool = False, gce_metadata: bool = False) -> list[str]:
        """``command`` (an argument list) run under the wrapper.

        :param python: the interpreter that has ``airflow_spot_training`` installed.
        :param default_dir: the folder when :attr:`local_dir` is ``None``.
        :param aws_imds: also watch the AWS spot ``instance-action`` notice (EC2).
        :param gce_metadata: also watch the Compute Engine ``preempted`` flag.
        """
        local_dir = self.local_dir or default_dir
        return [python, "-m", WRAPPER_MODULE,
                *self.wrapper_args(local_dir, aws_imds=aws_imds, gce_metadata=gce_metadata), "--", *command]

    def wrap_shell(self, command: str, *, python: str = "python3", default_dir: str = VM_CHECKPOINT_DIR,
                   aws_imds: bool = False, gce_metadata: bool = False) -> str:
        """``command`` (a shell command line, as VM bootstraps run it) run under the wrapper."""
        argv = self.wrap(["bash", "-c", command], python=python, default_dir=default_dir,
                         aws_imds=aws_imds, gce_metadata=gce_metadata)
        return shlex.join(argv)


# -- what each backend passes (the lead wires these into the backends) ---------------------
def ec2_user_data_command(sync: FolderSync, command: str) -> str:
    """EC2: the ``TRAINING_COMMAND`` the bootstrap runs with ``bash -c`` (or inside the container).

    The folder is ``/mnt/checkpoint`` unless ``local_dir`` says otherwise; the wrapper also
    watches the two-minute IMDSv2 ``instance-action`` notice and forwards it as SIGTERM.
    """
    return sync.wrap_shell(command, python="python3", default_dir=VM_CHECKPOINT_DIR, aws_imds=True)


def compute_engine_command(sync: FolderSync, command: str) -> str:
    """Compute Engine: the ``spot-training-command`` metadata value the startup script runs.

    The startup script already forwards the 30 s preemption SIGTERM; the wrapper also polls
    ``instance/preempted`` so the flush starts even when the signal is late.
    """
    return sync.wrap_shell(command, python="python3", default_dir=VM_CHECKPOINT_DIR, gce_metadata=True)


def vertex_ai_container_command(sync: FolderSync, command: list[str]) -> list[str]:
    """Vertex AI: the container ``command`` (the entrypoint override); ``args`` stay as they are.

    The container runs ``command + args``, so the training's arguments land after the
    wrapper's ``--``. The image needs ``airflow-spot-training[runtime]`` and gcsfs;
    ``SPOT_TRAINING_CHECKPOINT_URI`` (the ``gs://`` prefix) is in the contract already.
    """
    if not command:
        raise FolderSyncConfigError(
            "checkpoint_sync on Vertex AI needs an explicit container command: the wrapper must know "
            "what to run (the image's entrypoint is not known here)."
        )
    return sync.wrap(list(command), python="python3", default_dir=VM_CHECKPOINT_DIR, gce_metadata=True)


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = "0 or more" if allow_zero else "more than 0"
        raise FolderSyncConfigError(f"checkpoint_sync {name}={value!r} must be a number of {bound}.")
