"""A Hugging Face ``Trainer`` that survives spot preemptions: one callback.

::

    spot = SpotTrainerCallback()
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=spot.checkpoint_dir, save_steps=50, ...),
                      train_dataset=data, callbacks=[spot])
    sys.exit(spot.train(trainer))   # 0 when done, 143 when stopped by an interruption notice

The callback

* turns the interruption notice (SIGTERM, which the folder-sync wrapper forwards for
  every cloud's notice) into a checkpoint at the next step boundary, then stops training;
* marks each checkpoint finished once the Trainer's save returned (the wrapper uploads
  only finished checkpoints, so a half-written ``checkpoint-N`` is never the resume point);
* finds the newest finished checkpoint in the folder (the one the wrapper restored, or
  SageMaker's) for ``trainer.train(resume_from_checkpoint=...)``; the Trainer restores the
  model, optimizer, scheduler, RNG states and skips the batches already seen.

Needs ``transformers`` (the ``[hf]`` extra); imports no Airflow and no cloud SDK.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from airflow_spot_training.runtime.checkpoint_folder import (
    announce_adapter,
    list_entries,
    mark_finished,
    read_marker,
)
from airflow_spot_training.runtime.checkpoint_folder import checkpoint_dir as checkpoint_dir_of
from airflow_spot_training.runtime.interruption import InterruptionWatcher

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 143
CHECKPOINT_PREFIX = "checkpoint-"


def newest_finished_checkpoint(folder: str, prefix: str = CHECKPOINT_PREFIX) -> tuple[str, int] | None:
    """The newest ``<prefix>N`` entry in ``folder`` that has a finished marker, and its step."""
    best: tuple[str, int] | None = None
    for entry in list_entries(folder):
        marker = read_marker(folder, entry.name)
        if not entry.name.startswith(prefix) or marker is None:
            continue
        step = int(marker["step"])
        if best is None or step > best[1]:
            best = (entry.path, step)
    return best


class SpotTrainerCallback(TrainerCallback):
    """Save on the interruption notice, mark saves finished, resume from the newest finished one.

    :param checkpoint_dir: the folder; default ``SPOT_TRAINING_CHECKPOINT_DIR`` (the wrapper's),
        else SageMaker's ``/opt/ml/checkpoints``. Use it as ``TrainingArguments.output_dir``.
    :param watcher: an :class:`InterruptionWatcher` to use; default: one on SIGTERM, started here
        (construct the callback in the main thread, before the Trainer).
    """

    def __init__(self, checkpoint_dir: str | None = None, *, watcher: InterruptionWatcher | None = None) -> None:
        self.checkpoint_dir = os.path.abspath(checkpoint_dir_of(checkpoint_dir))
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        announce_adapter(self.checkpoint_dir, "huggingface")
        self.watcher = watcher or InterruptionWatcher(handle_sigterm=True).start()
        self.interrupted = False
        found = newest_finished_checkpoint(self.checkpoint_dir)
        #: the checkpoint directory to resume from, or ``None`` for a fresh start
        self.resume_from: str | None = found[0] if found else None
        #: the step the training resumed from (0 for a fresh start)
        self.resumed_step: int = found[1] if found else 0
        self._last_saved_step: int | None = None

    # -- the Trainer's hooks ------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        _check_output_dir(args, self.checkpoint_dir)
        print(json.dumps({"event": "start", "adapter": "huggingface", "step": state.global_step,
                          "resumed_from": self.resumed_step if self.resume_from else None}), flush=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        if self.watcher.requested and not self.interrupted and state.global_step < state.max_steps:
            self.interrupted = True
            control.should_save = True  # the Trainer saves right after this hook, at this step
            control.should_training_stop = True
            print(json.dumps({"event": "interrupted", "step": state.global_step}), flush=True)
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if not args.should_save:  # not the process that writes (distributed training)
            return
        entry = f"{CHECKPOINT_PREFIX}{state.global_step}"
        if not os.path.isdir(os.path.join(args.output_dir, entry)):
            log.warning("the Trainer reported a save, but %s is not in %s", entry, args.output_dir)
            return
        mark_finished(args.output_dir, entry, step=state.global_step, total_steps=state.max_steps or None,
                      epoch=int(state.epoch or 0), reason="interruption" if self.interrupted else "periodic")
        self._last_saved_step = state.global_step
        print(json.dumps({"event": "saved", "step": state.global_step}), flush=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.watcher.stop()

    # -- running ------------------------------------------------------------------------
    @property
    def exit_code(self) -> int:
        """What the script should exit with: 143 after an interruption (so it counts as a preemption)."""
        return EXIT_INTERRUPTED if self.interrupted else 0

    def train(self, trainer: Any, **train_kwargs: Any) -> int:
        """``trainer.train(resume_from_checkpoint=<newest finished>)``; return :attr:`exit_code`."""
        trainer.train(resume_from_checkpoint=self.resume_from, **train_kwargs)
        return self.exit_code


def _check_output_dir(args: TrainingArguments, folder: str) -> None:
    if os.path.abspath(args.output_dir) != os.path.abspath(folder):
        raise ValueError(
            f"TrainingArguments.output_dir={args.output_dir!r} is not the synced checkpoint folder {folder!r}: "
            "pass output_dir=callback.checkpoint_dir, or checkpoints are never uploaded."
        )
