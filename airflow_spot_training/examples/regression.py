"""A small, real PyTorch training job that survives preemption: the demo's workload.

Trains a two-layer MLP with dropout on generated regression data (no downloads),
with Adam and a step LR schedule, shuffling each epoch from a seeded generator.
Deterministic for a seed: trained straight through or through any number of
preemptions, it ends with the same parameters, because the checkpoint restores
the model, optimizer, scheduler, RNG states and the data position.

Run by a spot-training backend (it reads the environment contract)::

    python -m airflow_spot_training.examples.regression --steps 300

or by hand with ``--checkpoint-uri DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch
from torch import nn

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.runtime.secrets import read_contract
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from airflow_spot_training.runtime.interruption import InterruptionWatcher
from airflow_spot_training.runtime.results import write_metrics
from airflow_spot_training.runtime.torch_state import TorchCheckpointer

log = logging.getLogger("regression")

EXIT_INTERRUPTED = 143  # what a SIGTERM'd process conventionally exits with
EXIT_INJECTED_FAILURE = 3


def make_data(seed: int, n: int = 2048, features: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = torch.sin(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def make_model(features: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps between periodic checkpoints")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (to make runs last)")
    p.add_argument("--checkpoint-uri", default=None, help="overrides the contract's checkpoint URI")
    p.add_argument("--fail-at-step", type=int, default=None,
                   help="failure injection: exit with code 3 at this step, once (see --fail-marker)")
    p.add_argument("--fail-marker", default=None,
                   help="file created at the injected failure; while it exists the failure is not repeated")
    p.add_argument("--save-final-params", default=None, help="write the final parameters to this file")
    p.add_argument("--async-save", action="store_true",
                   help="periodic checkpoints are written in the background (TorchCheckpointer.save_async)")
    return p.parse_args(argv)


def train(args: argparse.Namespace, contract: Contract) -> int:
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    x, y = make_data(args.seed)
    model = make_model(x.shape[1], args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    config = {k: getattr(args, k) for k in ("batch_size", "hidden", "lr", "seed", "steps")}
    manager = CheckpointManager(contract.checkpoint_uri, keep_last=args.keep_last, every_steps=args.checkpoint_every)
    ckpt = TorchCheckpointer(manager, model=model, optimizer=optimizer, scheduler=scheduler, config=config,
                             total_steps=args.steps, attempt=contract.attempt)
    resumed = ckpt.restore()
    step, epoch, batch = resumed.step, resumed.epoch, int(resumed.data_position.get("batch", 0))
    log.info("attempt %s on %s: %s at step %s", contract.attempt, contract.capacity,
             "resuming" if resumed.resumed else "starting", step)
    print(json.dumps({"event": "start", "attempt": contract.attempt, "step": step}), flush=True)
    batches_per_epoch = x.shape[0] // args.batch_size
    loss_fn = nn.MSELoss()
    loss = torch.tensor(float("nan"))
    with InterruptionWatcher(handle_sigterm=True) as watcher:
        while step < args.steps:
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
            while batch < batches_per_epoch and step < args.steps:
                idx = perm[batch * args.batch_size:(batch + 1) * args.batch_size]
                model.train()
                optimizer.zero_grad()
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                batch += 1
                if batch == batches_per_epoch:
                    epoch, batch = epoch + 1, 0
                position = {"batch": batch}
                if args.fail_at_step is not None and step == args.fail_at_step and args.fail_marker \
                        and not os.path.exists(args.fail_marker):
                    open(args.fail_marker, "w").close()
                    log.error("injected failure at step %s", step)
                    return EXIT_INJECTED_FAILURE
                if watcher.requested:
                    ckpt.save(step, epoch=epoch, data_position=position, reason="interruption")
                    print(json.dumps({"event": "interrupted", "step": step}), flush=True)
                    return EXIT_INTERRUPTED
                if manager.should_save(step):
                    save = ckpt.save_async if args.async_save else ckpt.save
                    save(step, epoch=epoch, data_position=position)
                if args.step_delay:
                    time.sleep(args.step_delay)
                if batch == 0:
                    break
    ckpt.save(step, epoch=epoch, data_position={"batch": batch}, reason="final")
    model.eval()
    with torch.no_grad():
        final_loss = float(loss_fn(model(x), y))
    write_metrics({"final_loss": final_loss, "steps": step}, contract)
    if args.save_final_params:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.save_final_params)
    print(json.dumps({"event": "done", "step": step, "final_loss": final_loss}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.checkpoint_uri:
        contract = Contract(checkpoint_uri=args.checkpoint_uri, attempt=int(os.environ.get("SPOT_TRAINING_ATTEMPT", 1)),
                            capacity=os.environ.get("SPOT_TRAINING_CAPACITY", "on_demand"), preemptions=0,
                            run_key="manual")
    else:
        contract = read_contract()
    return train(args, contract)


if __name__ == "__main__":
    sys.exit(main())
