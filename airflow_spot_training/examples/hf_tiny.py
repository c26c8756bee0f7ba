"""A Hugging Face ``Trainer`` script that knows nothing of spot capacity but one callback.

A 2-layer GPT-2 built from a config in code (no weights downloaded) learns a synthetic
next-token task. Checkpoints go to the folder the synced-folder wrapper gives it
(``SPOT_TRAINING_CHECKPOINT_DIR``); :class:`~airflow_spot_training.runtime.huggingface.SpotTrainerCallback`
saves on the interruption notice, marks saves finished and resumes from the newest one.

Run by a backend with ``checkpoint_sync`` on::

    python -m airflow_spot_training.examples.hf_tiny --steps 60 --save-steps 10

Prints one JSON line per optimizer step (``{"event": "step", "step": N}``), per save and
at the start (with the step it resumed from), so a run's log tells its whole story.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here comes from the Hub

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from airflow_spot_training.core.contract import read_contract  # noqa: E402
from airflow_spot_training.runtime.huggingface import SpotTrainerCallback  # noqa: E402
from airflow_spot_training.runtime.results import write_metrics  # noqa: E402

VOCAB = 64
SEQUENCE = 16


class CountingData(torch.utils.data.Dataset):
    """Sequences ``a, a+k, a+2k, ...`` modulo the vocabulary: learnable, generated, seeded."""

    def __init__(self, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (size, 1), generator=g)
        stride = torch.randint(1, 4, (size, 1), generator=g)
        self.ids = (start + stride * torch.arange(SEQUENCE)) % VOCAB

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class StepReport(TrainerCallback):
    """One JSON line per step (the e2e tests read them), and an optional delay to make runs last."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        print(json.dumps({"event": "step", "step": state.global_step}), flush=True)
        if self.delay:
            time.sleep(self.delay)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step")
    p.add_argument("--checkpoint-dir", default=None, help="default: SPOT_TRAINING_CHECKPOINT_DIR")
    return p.parse_args(argv)


def build_trainer(args: argparse.Namespace, spot: SpotTrainerCallback) -> Trainer:
    torch.manual_seed(args.seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQUENCE, n_embd=32, n_layer=2, n_head=2)
    training_args = TrainingArguments(
        output_dir=spot.checkpoint_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=3e-3,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        logging_steps=args.save_steps,
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        full_determinism=True,  # the same parameters whether trained straight through or resumed
    )
    return Trainer(model=GPT2LMHeadModel(config), args=training_args,
                   train_dataset=CountingData(256, args.seed), callbacks=[spot, StepReport(args.step_delay)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spot = SpotTrainerCallback(args.checkpoint_dir)
    trainer = build_trainer(args, spot)
    code = spot.train(trainer)
    if code == 0:
        loss = trainer.state.log_history[-1].get("train_loss") if trainer.state.log_history else None
        if os.environ.get("SPOT_TRAINING_CHECKPOINT_URI"):
            write_metrics({"steps": trainer.state.global_step, "train_loss": loss}, read_contract())
        print(json.dumps({"event": "done", "step": trainer.state.global_step, "train_loss": loss}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
