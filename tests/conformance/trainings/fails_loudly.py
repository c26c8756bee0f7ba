"""A training that fails for real after printing what a careless script prints.

It trains ``--steps`` steps (``step N loss L`` each), then echoes its configuration,
secrets included (the ``WANDB_API_KEY`` it was given and a database URL with a
password), and dies with a traceback. The task log must show the last lines of its
output, the traceback's last line among them, with every secret masked.
"""

from __future__ import annotations

import argparse
import os
import time

from airflow_spot_training.runtime import read_contract

DATABASE_URL = "postgresql://trainer:hunter2-db-password@db.internal:5432/features"
AWS_KEY_ID = "AKIA" + "Q3EXAMPLEKEY7XYZ"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--step-seconds", type=float, default=0.01)
    args = parser.parse_args()
    contract = read_contract()
    print(f"attempt {contract.attempt}: starting", flush=True)
    for step in range(1, args.steps + 1):
        time.sleep(args.step_seconds)
        print(f"step {step} loss {1.0 / step:.4f}", flush=True)
    print(f"config: wandb_api_key={os.environ.get('WANDB_API_KEY')} features={DATABASE_URL}", flush=True)
    print(f"using the key {AWS_KEY_ID} and the token {os.environ.get('WANDB_API_KEY')}", flush=True)
    raise ValueError(f"the loss diverged at step {args.steps}")


if __name__ == "__main__":
    main()
