"""A PyTorch Lightning script that knows nothing of spot capacity but one callback.

A small MLP with dropout learns generated regression data. Checkpoints go to the folder
the synced-folder wrapper gives it (``SPOT_TRAINING_CHECKPOINT_DIR``);
:class:`~airflow_spot_training.runtime.lightning.SpotLightningCallback` saves on the
interruption notice, marks saves finished and resumes from the newest one, and
:class:`~airflow_spot_training.runtime.lightning.ResumableDataLoader` continues mid-epoch.

Run by a backend with ``checkpoint_sync`` on::

    python -m airflow_spot_training.examples.lightning_tiny --steps 60 --save-steps 10

Prints one JSON line per optimizer step (``{"event": "step", "step": N}``), per save and
at the start (with the step it resumed from).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
from torch import nn

from airflow_spot_training.core.contract import read_contract
from airflow_spot_training.runtime.lightning import ResumableDataLoader, SpotLightningCallback, pl
from airflow_spot_training.runtime.results import write_metrics


class Regression(pl.LightningModule):
    def __init__(self, features: int = 8, hidden: int = 32, lr: float = 0.01, step_delay: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))
        self.lr = lr
        self.step_delay = step_delay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        print(json.dumps({"event": "step", "step": self.trainer.global_step}), flush=True)
        if self.step_delay:
            time.sleep(self.step_delay)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 20, 0.5)}


def make_data(seed: int, n: int = 512, features: int = 8) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.sin(x @ torch.randn(features, 1, generator=g))
    return torch.utils.data.TensorDataset(x, y)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step")
    p.add_argument("--checkpoint-dir", default=None, help="default: SPOT_TRAINING_CHECKPOINT_DIR")
    p.add_argument("--save-final-params", default=None, help="write the final parameters to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spot = SpotLightningCallback(args.checkpoint_dir, every_n_train_steps=args.save_steps)
    pl.seed_everything(args.seed, verbose=False)
    torch.use_deterministic_algorithms(True)
    model = Regression(step_delay=args.step_delay)
    loader = ResumableDataLoader(make_data(args.seed), batch_size=args.batch_size, seed=args.seed)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, callbacks=[spot],
                         enable_checkpointing=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=spot.checkpoint_dir)
    code = spot.fit(trainer, model, train_dataloaders=loader)
    if code == 0:
        loss = float(trainer.callback_metrics.get("train_loss", float("nan")))
        if os.environ.get("SPOT_TRAINING_CHECKPOINT_URI"):
            write_metrics({"steps": trainer.global_step, "train_loss": loss}, read_contract())
        if args.save_final_params:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.save_final_params)
        print(json.dumps({"event": "done", "step": trainer.global_step, "train_loss": loss}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
