"""The demo's regression, trained data-parallel by a gang of nodes (``num_nodes=N``).

Each node runs this same script; the contract tells it its rank, the gang's size and
where rank 0 listens (:func:`~airflow_spot_training.runtime.gang.join_gang`). The model is
wrapped in ``DistributedDataParallel`` over gloo: every step, each rank computes the
gradient on its slice of the batch and DDP averages them, so all ranks hold the same
parameters. Each rank checkpoints its whole training state (model, optimizer, scheduler,
RNG, data position) as its shard of the step; the step counts once every rank's shard is
there, so a resume always starts every rank from one consistent step. When any node gets
the notice, all ranks agree to stop at the same step
(:func:`~airflow_spot_training.runtime.gang.gang_stop_requested`), write their shards and
exit 143. Trained straight through or through preemptions, it ends bit-identical.

Run by a spot-training backend with ``num_nodes=2``::

    python -m airflow_spot_training.examples.ddp_regression --steps 120
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from airflow_spot_training.core.contract import Contract
from airflow_spot_training.examples.regression import EXIT_INTERRUPTED, make_data, make_model
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from airflow_spot_training.runtime.gang import gang_stop_requested, join_gang, leave_gang
from airflow_spot_training.runtime.interruption import InterruptionWatcher
from airflow_spot_training.runtime.results import write_metrics
from airflow_spot_training.runtime.secrets import read_contract
from airflow_spot_training.runtime.torch_state import TorchCheckpointer

log = logging.getLogger("ddp_regression")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="the global batch, split between the ranks")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between periodic checkpoints")
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (to make runs last)")
    p.add_argument("--aws-imds", action="store_true", help="also watch the EC2 instance-action notice")
    p.add_argument("--save-final-params", default=None, help="rank 0 writes the final parameters to this file")
    return p.parse_args(argv)


class _Trainer:
    """One rank's model, optimizer and checkpointer."""

    def __init__(self, args: argparse.Namespace, contract: Contract) -> None:
        torch.manual_seed(args.seed)
        torch.use_deterministic_algorithms(True)
        self.args, self.contract = args, contract
        self.x, self.y = make_data(args.seed)
        self.model = make_model(self.x.shape[1], args.hidden)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=50, gamma=0.5)
        config = {k: getattr(args, k) for k in ("batch_size", "hidden", "lr", "seed", "steps")}
        config["num_nodes"] = contract.num_nodes
        self.manager = CheckpointManager(contract.checkpoint_uri, keep_last=3, every_steps=args.checkpoint_every)
        self.checkpointer = TorchCheckpointer(self.manager, model=self.model, optimizer=self.optimizer,
                                              scheduler=self.scheduler, config=config, total_steps=args.steps,
                                              attempt=contract.attempt)
        self.loss_fn = nn.MSELoss()

    def batch(self, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch ``batch`` of epoch ``epoch``."""
        order = torch.randperm(self.x.shape[0], generator=torch.Generator().manual_seed(self.args.seed * 1000 + epoch))
        size = self.args.batch_size
        idx = order[batch * size:(batch + 1) * size][self.contract.node_rank::self.contract.num_nodes]
        return self.x[idx], self.y[idx]

    def save(self, step: int, epoch: int, batch: int, reason: str = "periodic") -> None:
        self.checkpointer.save(step, epoch=epoch, data_position={"batch": batch}, reason=reason)


def train(args: argparse.Namespace, contract: Contract) -> int:
    trainer = _Trainer(args, contract)
    # [START howto_gang_training]
    resumed = trainer.checkpointer.restore()  # this rank's shard of the newest step every rank committed
    step, epoch, batch = resumed.step, resumed.epoch, int(resumed.data_position.get("batch", 0))
    join_gang(contract)
    model = DistributedDataParallel(trainer.model) if contract.is_gang else trainer.model
    print(json.dumps({"event": "start", "attempt": contract.attempt, "rank": contract.node_rank, "step": step}),
          flush=True)
    batches_per_epoch = trainer.x.shape[0] // args.batch_size
    loss = torch.tensor(float("nan"))
    with InterruptionWatcher(handle_sigterm=True, aws_imds=args.aws_imds) as watcher:
        while step < args.steps:
            inputs, targets = trainer.batch(epoch, batch)
            model.train()
            trainer.optimizer.zero_grad()
            loss = trainer.loss_fn(model(inputs), targets)
            loss.backward()  # DDP averages the gradients of every rank here
            trainer.optimizer.step()
            trainer.scheduler.step()
            step, batch = step + 1, batch + 1
            if batch == batches_per_epoch:
                epoch, batch = epoch + 1, 0
            print(f"rank {contract.node_rank} step {step} loss {loss.item():.6f}", flush=True)
            if gang_stop_requested(watcher.requested):  # every rank stops at this same step
                trainer.save(step, epoch, batch, reason="interruption")
                return EXIT_INTERRUPTED
            if trainer.manager.should_save(step):
                trainer.save(step, epoch, batch)
            # [END howto_gang_training]
            if args.step_delay:
                time.sleep(args.step_delay)
    trainer.save(step, epoch, batch, reason="final")
    leave_gang()
    if contract.node_rank == 0:  # rank 0 speaks for the gang
        write_metrics({"final_loss": loss.item(), "steps": step}, contract)
        if args.save_final_params:
            torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, args.save_final_params)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return train(parse_args(argv), read_contract())


if __name__ == "__main__":
    sys.exit(main())
