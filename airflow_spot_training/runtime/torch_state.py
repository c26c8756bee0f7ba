"""Everything a PyTorch training loop needs to resume exactly, saved as one checkpoint.

A checkpoint holds the model, optimizer, LR scheduler, step and epoch, the RNG
states (python, numpy, torch CPU and CUDA), the AMP grad scaler when present,
the data position, and the configuration a resume must match. Resuming with a
different configuration is refused with a message that names what changed.

Requires torch (the ``[torch]`` extra); imports no Airflow and no cloud SDK.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from airflow_spot_training.runtime.checkpoint import Checkpoint, CheckpointError, CheckpointManager

STATE_FILE = "state.pt"


def config_fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # numpy is optional
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _snapshot(value: Any, buffers: dict[tuple[Any, ...], torch.Tensor], path: tuple[Any, ...] = ()) -> Any:
    """A copy of a state tree that later training steps cannot change: tensors copied to CPU.

    Tensors are copied into ``buffers`` kept from the previous snapshot when shape and dtype
    still match: no fresh allocation (and no page faults) of a large state at every save.
    """
    if isinstance(value, torch.Tensor):
        buffer = buffers.get(path)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = buffers[path] = torch.empty_like(value, device="cpu")
        return buffer.copy_(value.detach())
    if isinstance(value, dict):
        return {k: _snapshot(v, buffers, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_snapshot(v, buffers, path + (i,)) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_snapshot(v, buffers, path + (i,)) for i, v in enumerate(value))
    return copy.deepcopy(value)


@dataclass
class Resumed:
    """Where training continues after :meth:`TorchCheckpointer.restore`."""

    step: int = 0
    epoch: int = 0
    data_position: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None


class TorchCheckpointer:
    """Save and restore a whole PyTorch training state through a :class:`CheckpointManager`.

    :param manager: where checkpoints live.
    :param config: the run's configuration (JSON-able); a checkpoint written under a
        different configuration is refused on resume.
    :param total_steps: the planned number of steps, written to each commit record
        so the operator can report progress.
    """

    def __init__(
        self,
        manager: CheckpointManager,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        scaler: Any | None = None,
        config: dict[str, Any] | None = None,
        total_steps: int | None = None,
        attempt: int | None = None,
    ) -> None:
        self.manager = manager
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.config = dict(config or {})
        self.fingerprint = config_fingerprint(self.config)
        self.total_steps = total_steps
        self.attempt = attempt
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: Future[Checkpoint] | None = None
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}  # reused by save_async's snapshots

    def _state(self, step: int, epoch: int, data_position: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": step,
            "epoch": epoch,
            "rng": _rng_state(),
            "data_position": dict(data_position or {}),
            "config": self.config,
        }

    def _write(self, step: int, state: dict[str, Any], epoch: int, reason: str) -> Checkpoint:
        return self.manager.save(
            step,
            {STATE_FILE: lambda f: torch.save(state, f)},
            total_steps=self.total_steps,
            epoch=epoch,
            attempt=self.attempt,
            reason=reason,
            fingerprint=self.fingerprint,
        )

    def save(self, step: int, *, epoch: int = 0, data_position: dict[str, Any] | None = None,
             reason: str = "periodic") -> Checkpoint:
        """Write and commit checkpoint ``step`` now (after any save still in flight)."""
        self.wait()
        return self._write(step, self._state(step, epoch, data_position), epoch, reason)

    def save_async(self, step: int, *, epoch: int = 0, data_position: dict[str, Any] | None = None,
                   reason: str = "periodic") -> Future[Checkpoint]:
        """Snapshot the state to CPU memory now; write and commit it in a background thread.

        The training blocks only for the snapshot (and for a previous save still in flight:
        one at a time, so checkpoints commit in order). Until the commit record is written
        the previous checkpoint stays the resume point, as with :meth:`save`. The snapshot's
        memory (one more copy of the state) is kept for the next save. Call
        :meth:`wait` (or :meth:`save`, which waits) before exiting, e.g. on the notice.
        Errors of the background write are raised by the next :meth:`wait`.
        """
        self.wait()
        state = self._state(step, epoch, data_position)
        # the tensors later steps change are copied; the RNG states are fresh copies already
        snapshot = {key: value if key == "rng" else _snapshot(value, self._buffers, (key,))
                    for key, value in state.items()}
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._in_flight = self._writer.submit(self._write, step, snapshot, epoch, reason)
        return self._in_flight

    def wait(self) -> Checkpoint | None:
        """Block until the save in flight (if any) is committed; return it, or raise its error."""
        in_flight, self._in_flight = self._in_flight, None
        return in_flight.result() if in_flight is not None else None

    def restore(self) -> Resumed:
        """Load the newest committed checkpoint into the model, optimizer, ... ; a fresh start if none.

        With no checkpoint under its own prefix, a run with a warm start (``init_from=``) loads that one.
        """
        checkpoint = self.manager.resume_point()
        if checkpoint is None:
            return Resumed()
        if checkpoint.record.fingerprint not in (None, self.fingerprint):
            with self.manager.open_file(checkpoint, STATE_FILE) as f:
                saved = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
            raise CheckpointError(incompatible_message(checkpoint, saved.get("config", {}), self.config))
        with self.manager.open_file(checkpoint, STATE_FILE) as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return Resumed(
            step=int(state["step"]),
            epoch=int(state["epoch"]),
            data_position=dict(state.get("data_position") or {}),
            checkpoint=checkpoint,
        )


def incompatible_message(checkpoint: Checkpoint, saved: dict[str, Any], current: dict[str, Any]) -> str:
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k, "<absent>") != current.get(k, "<absent>"))
    details = ", ".join(f"{k}: {saved.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}" for k in changed)
    return (
        f"refusing to resume from the checkpoint at step {checkpoint.step} ({checkpoint.uri}): it was written "
        f"with a different configuration ({details or 'fingerprint differs'}). Restore the original "
        "configuration, or give the task a new checkpoint_prefix to start from scratch"
        + (" (this is a warm start: give init_from= a checkpoint of the same configuration, or leave it out)."
           if checkpoint.warm_start else ".")
    )
