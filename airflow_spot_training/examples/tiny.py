"""A tiny training workload: a plain Python loop that checkpoints like a real one.

Made for deployment drills, fault injection and load tests, where hundreds of
trainings run at once and PyTorch would only burn CPU. It imports neither torch
nor Airflow (only the runtime's ``CheckpointManager`` and ``InterruptionWatcher``):

* the state is ``{"step": n, "total": 0 + 1 + ... + (n - 1)}``; a checkpoint is
  committed every ``--checkpoint-every`` steps, and at once on an interruption
  notice (SIGTERM); a resumed attempt carries on from the newest *committed* step;
* at the end it records ``{"steps": n, "total": ...}`` as the attempt's metrics, so
  a caller can check that no step was lost or counted twice across preemptions:
  ``total == steps * (steps - 1) // 2``;
* every start appends one JSON line to ``<checkpoint prefix>/_evidence/starts.jsonl``
  (attempt, capacity, pid, the step it resumed from, and any step directories it
  found without a commit record): real evidence of how many processes ran.

Run by a spot-training backend (it reads the environment contract)::

    python -m airflow_spot_training.examples.tiny --steps 40 --step-seconds 0.25

Fault injection: ``--stall-interruption-save`` makes the save after a notice write
its payload and then stall before the commit record, so the hard kill at the end of
the notice window cuts the checkpoint write short. When the notice lands right after a
periodic commit, it trains one more step first, so the cut write is always of a step
that was not committed (whatever the machine's speed).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time

import fsspec

from airflow_spot_training.core.checkpoint_protocol import COMMIT_FILE, parse_step_dir, step_dir_name
from airflow_spot_training.core.contract import Contract
from airflow_spot_training.runtime.secrets import read_contract
from airflow_spot_training.runtime.checkpoint import CheckpointManager
from airflow_spot_training.runtime.interruption import InterruptionWatcher
from airflow_spot_training.runtime.results import write_metrics

EXIT_INTERRUPTED = 143
EVIDENCE_FILE = "_evidence/starts.jsonl"
STATE_FILE = "state.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="total steps")
    p.add_argument("--step-seconds", type=float, default=0.25, help="seconds each step sleeps")
    p.add_argument("--checkpoint-every", type=int, default=5, help="steps between periodic checkpoints")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--stall-interruption-save", action="store_true",
                   help="fault injection: on a notice, write the payload but stall before the commit record")
    return p.parse_args(argv)


def uncommitted_steps(prefix: str) -> list[int]:
    """Step directories under ``prefix`` that have no commit record (interrupted writes)."""
    fs, root = fsspec.core.url_to_fs(prefix)
    try:
        entries = fs.ls(root.rstrip("/"), detail=False)
    except FileNotFoundError:
        return []
    steps = [s for s in map(parse_step_dir, entries) if s is not None]
    return sorted(s for s in steps if not fs.exists(posixpath.join(root, step_dir_name(s), COMMIT_FILE)))


def record_start(contract: Contract, start_step: int) -> None:
    """Append one line for this process start (one write with O_APPEND: atomic on a local disk)."""
    fs, root = fsspec.core.url_to_fs(contract.checkpoint_uri)
    line = json.dumps({
        "attempt": contract.attempt, "capacity": contract.capacity, "pid": os.getpid(),
        "start_step": start_step, "uncommitted_steps": uncommitted_steps(contract.checkpoint_uri),
        "at": time.time(),
    }) + "\n"
    path = posixpath.join(root, EVIDENCE_FILE)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    else:  # object stores have no append: one object per start
        fs.pipe_file(f"{path}.{contract.attempt}.{os.getpid()}", line.encode())


def _committed(manager: CheckpointManager, step: int) -> bool:
    latest = manager.latest()
    return latest is not None and latest.step == step


def train(args: argparse.Namespace, contract: Contract) -> int:
    manager = CheckpointManager(contract.checkpoint_uri, keep_last=args.keep_last,
                                every_steps=args.checkpoint_every)
    latest = manager.latest()
    step, total = 0, 0
    if latest is not None:
        with manager.open_file(latest, STATE_FILE) as f:
            state = json.loads(f.read())
        step, total = int(state["step"]), int(state["total"])
    record_start(contract, step)
    print(json.dumps({"event": "start", "attempt": contract.attempt, "step": step}), flush=True)

    def save(reason: str, stall: bool = False) -> None:
        files: dict = {STATE_FILE: json.dumps({"step": step, "total": total}).encode()}
        if stall:
            def never_finishes(f):  # the hard kill lands here: payload written, no commit record
                print(json.dumps({"event": "stalling-save", "step": step}), flush=True)
                time.sleep(3600)
            files["z-stall.bin"] = never_finishes
        manager.save(step, files, total_steps=args.steps, attempt=contract.attempt, reason=reason)

    with InterruptionWatcher(handle_sigterm=True) as watcher:
        while step < args.steps:
            if watcher.requested:
                if args.stall_interruption_save and _committed(manager, step):
                    total, step = total + step, step + 1  # the cut write must be a step not committed yet
                save("interruption", stall=args.stall_interruption_save)
                print(json.dumps({"event": "interrupted", "step": step}), flush=True)
                return EXIT_INTERRUPTED
            time.sleep(args.step_seconds)
            total += step
            step += 1
            if manager.should_save(step):
                save("periodic")
    save("final")
    write_metrics({"steps": step, "total": total}, contract)
    print(json.dumps({"event": "done", "step": step, "total": total}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return train(parse_args(argv), read_contract())


if __name__ == "__main__":
    sys.exit(main())
