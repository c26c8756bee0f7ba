"""A PyTorch Lightning training that survives spot preemptions: one callback, one data loader.

::

    spot = SpotLightningCallback(every_n_train_steps=50)
    loader = ResumableDataLoader(dataset, batch_size=32, seed=0)
    trainer = Trainer(max_steps=1000, callbacks=[spot], enable_checkpointing=False)
    sys.exit(spot.fit(trainer, model, train_dataloaders=loader))   # 0 when done, 143 when interrupted

The callback

* saves ``checkpoint-<global step>.ckpt`` into the synced folder every
  ``every_n_train_steps`` steps, at the end, and, on the interruption notice (SIGTERM,
  which the folder-sync wrapper forwards for every cloud's notice), at the next step
  boundary, then stops training cleanly (it takes SIGTERM over from Lightning while
  training, which would otherwise stop before a save). A save that falls on an epoch's
  last batch is taken one step later: Lightning does not resume exactly from there;
* marks each save finished once ``trainer.save_checkpoint`` returned, and keeps the
  newest ``keep_last`` in the folder;
* resumes with ``ckpt_path`` = the newest finished checkpoint (restored by the wrapper, or
  by SageMaker), and restores the RNG states Lightning itself does not keep.

:class:`ResumableDataLoader` restores the data position: its shuffled order is a function
of (seed, epoch), and a resumed run continues mid-epoch with the next unseen batch
(Lightning's stateful-loader protocol, with the position taken from the loop's own
progress counters).

Needs ``lightning`` or ``pytorch-lightning`` (the ``[lightning]`` extra); no Airflow, no cloud SDK.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

try:  # the unified package first, then the standalone one
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.exceptions import SIGTERMException
except ImportError:  # pragma: no cover - depends on what is installed
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.exceptions import SIGTERMException

from airflow_spot_training.runtime.checkpoint_folder import (
    announce_adapter,
    list_entries,
    mark_finished,
    read_marker,
    remove_entry,
)
from airflow_spot_training.runtime.checkpoint_folder import checkpoint_dir as checkpoint_dir_of
from airflow_spot_training.runtime.interruption import InterruptionWatcher

EXIT_INTERRUPTED = 143
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_SUFFIX = ".ckpt"
STATE_KEY = "spot_training"


class ResumableSampler(Sampler[int]):
    """Indices in an order fixed by (seed, epoch); can start the next pass part-way through."""

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self._skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        else:
            order = torch.arange(self.size)
        skip, self._skip = self._skip, 0
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that resumes mid-epoch where the checkpoint was taken.

    :param shuffle: shuffle each epoch, in an order fixed by ``seed`` and the epoch.
    :param seed: the shuffling seed.
    Other keyword arguments go to ``DataLoader`` (not ``sampler``/``batch_sampler``).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int = 1, shuffle: bool = True, seed: int = 0,
                 **kwargs: Any) -> None:
        self.resumable_sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=self.resumable_sampler, **kwargs)
        self.position: Callable[[], tuple[int, int]] | None = None  # (epoch, batches done), set by the callback

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.position() if self.position else (self.resumable_sampler.epoch, 0)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # after a save on an epoch's last batch this pass is empty, as Lightning expects: it
        # finishes that epoch, then starts the next one with set_epoch and a new pass
        self.resumable_sampler.resume(int(state["epoch"]), int(state["batches_done"]) * (self.batch_size or 1))


def newest_finished_checkpoint(folder: str) -> tuple[str, int] | None:
    """The newest finished ``checkpoint-N.ckpt`` in ``folder``, and its step."""
    best: tuple[str, int] | None = None
    for entry in list_entries(folder):
        marker = read_marker(folder, entry.name)
        if marker is None or not (entry.name.startswith(CHECKPOINT_PREFIX) and entry.name.endswith(CHECKPOINT_SUFFIX)):
            continue
        if best is None or int(marker["step"]) > best[1]:
            best = (entry.path, int(marker["step"]))
    return best


def _rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # pragma: no cover
        pass
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                             saved["has_gauss"], saved["cached"]))


class SpotLightningCallback(pl.Callback):
    """Checkpoint into the synced folder, on the notice too; resume from the newest finished one.

    :param checkpoint_dir: the folder; default ``SPOT_TRAINING_CHECKPOINT_DIR`` (the wrapper's),
        else SageMaker's ``/opt/ml/checkpoints``.
    :param every_n_train_steps: periodic saves (``None``: only on the notice and at the end).
    :param keep_last: finished checkpoints kept in the folder (the prefix has its own ``keep_last``).
    :param watcher: an :class:`InterruptionWatcher`; default: one on SIGTERM, started here
        (construct the callback in the main thread, before the Trainer).
    """

    def __init__(self, checkpoint_dir: str | None = None, *, every_n_train_steps: int | None = None,
                 keep_last: int = 2, watcher: InterruptionWatcher | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be 1 or more, or None; got {every_n_train_steps}")
        if keep_last < 1:
            raise ValueError(f"keep_last must be 1 or more, got {keep_last}")
        self.checkpoint_dir = os.path.abspath(checkpoint_dir_of(checkpoint_dir))
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        announce_adapter(self.checkpoint_dir, "lightning")
        self.every_n_train_steps = every_n_train_steps
        self.keep_last = keep_last
        self.watcher = watcher or InterruptionWatcher(handle_sigterm=True).start()
        self.interrupted = False
        found = newest_finished_checkpoint(self.checkpoint_dir)
        #: the ``.ckpt`` to resume from, or ``None`` for a fresh start
        self.resume_from: str | None = found[0] if found else None
        self.resumed_step: int = found[1] if found else 0
        self._last_saved_step: int | None = self.resumed_step if found else None
        self._pending_rng: dict[str, Any] | None = None
        self._postponed = False

    # -- resuming --------------------------------------------------------------------------
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._pending_rng = (checkpoint.get(STATE_KEY) or {}).get("rng")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[STATE_KEY] = {"rng": _rng_state(), "global_step": trainer.global_step}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_sigterm()
        progress = trainer.fit_loop.epoch_loop.batch_progress
        for loader in _loaders(trainer.train_dataloader):
            if isinstance(loader, ResumableDataLoader):
                loader.position = lambda: (trainer.current_epoch, progress.current.processed)
        print(json.dumps({"event": "start", "adapter": "lightning", "step": trainer.global_step,
                          "resumed_from": self.resumed_step if self.resume_from else None}), flush=True)

    def _take_over_sigterm(self) -> None:
        """Lightning stops on SIGTERM right after the batch it lands in, which can be before any
        hook of ours could save. While training, SIGTERM only sets our flag: we save at the next
        step boundary and stop cleanly. (Lightning puts its handlers back at teardown.)"""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: self.watcher.notify("sigterm"))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:  # as the interrupted run had it after its last step
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    # -- saving ----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        noticed = (self.watcher.requested or trainer.received_sigterm) and not self.interrupted
        due = bool(self.every_n_train_steps) and trainer.global_step % self.every_n_train_steps == 0
        if not (noticed or due or self._postponed):
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and trainer.num_training_batches > 1:
            # Lightning does not resume exactly from a save on an epoch's last batch (the epoch-end
            # LR scheduler step is skipped): save one step later, in the next epoch
            self._postponed = True
            return
        self._postponed = False
        if noticed:
            self._save_for_notice(trainer)
        else:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.interrupted:
            self.save(trainer, reason="final")
        self.watcher.stop()

    def _save_for_notice(self, trainer: pl.Trainer) -> None:
        self.interrupted = True
        self.save(trainer, reason="interruption")
        trainer.should_stop = True
        print(json.dumps({"event": "interrupted", "step": trainer.global_step}), flush=True)

    def save(self, trainer: pl.Trainer, *, reason: str = "periodic") -> str | None:
        """Write ``checkpoint-<step>.ckpt`` and mark it finished; ``None`` if this step is saved already."""
        step = trainer.global_step
        if step == self._last_saved_step:
            return None
        name = f"{CHECKPOINT_PREFIX}{step}{CHECKPOINT_SUFFIX}"
        path = os.path.join(self.checkpoint_dir, name)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            mark_finished(self.checkpoint_dir, name, step=step, total_steps=total, epoch=trainer.current_epoch,
                          reason=reason)
            self._prune()
        self._last_saved_step = step
        print(json.dumps({"event": "saved", "step": step}), flush=True)
        return path

    def _prune(self) -> None:
        finished = []
        for entry in list_entries(self.checkpoint_dir):
            marker = read_marker(self.checkpoint_dir, entry.name)
            if marker is not None and entry.name.startswith(CHECKPOINT_PREFIX):
                finished.append((int(marker["step"]), entry))
        finished.sort(key=lambda item: item[0])
        for _, entry in finished[: -self.keep_last]:
            remove_entry(self.checkpoint_dir, entry.name)

    # -- running ---------------------------------------------------------------------------
    @property
    def exit_code(self) -> int:
        """What the script should exit with: 143 after an interruption (so it counts as a preemption)."""
        return EXIT_INTERRUPTED if self.interrupted else 0

    def fit(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> int:
        """``trainer.fit(..., ckpt_path=<newest finished>)``; return :attr:`exit_code`."""
        kwargs.setdefault("ckpt_path", self.resume_from)
        try:
            trainer.fit(*args, **kwargs)
        except SIGTERMException:  # Lightning's own stop on SIGTERM, after our save
            self.interrupted = True
        return self.exit_code


def _loaders(value: Any) -> list[Any]:
    """The data loaders inside what ``trainer.train_dataloader`` returns (one, or a collection)."""
    if isinstance(value, DataLoader):
        return [value]
    if isinstance(value, dict):
        return [loader for item in value.values() for loader in _loaders(item)]
    if isinstance(value, (list, tuple)):
        return [loader for item in value for loader in _loaders(item)]
    return []
