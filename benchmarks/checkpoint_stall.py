"""Checkpoint stall: what checkpointing costs the training, with and without the asynchronous save.

    python benchmarks/checkpoint_stall.py                 # local directory, both state sizes
    python benchmarks/checkpoint_stall.py --store s3      # moto's S3 on loopback (a separate process)
    python benchmarks/checkpoint_stall.py --quick         # fewer steps, for a smoke run
    python benchmarks/checkpoint_stall.py --workload 1gb  # one of example, 1gb, both

Two workloads train for real on the CPU with ``TorchCheckpointer``:

* ``example``: the demo's model (``examples/regression.py``: MLP 16-64-1, Adam, StepLR),
  batch 64, its own training step;
* ``1gb``: two 8192 x 8192 linear layers (512 MiB of fp32 weights) with SGD momentum
  (512 MiB more): a 1 GiB checkpoint.

Each runs three times at the default cadence (a checkpoint every 20 steps, the example's
``--checkpoint-every``): without checkpoints (the baseline step time), with ``save``
(synchronous) and with ``save_async``. Figures per save:

* ``blocked``: seconds the training loop waits inside the save call;
* ``share``: blocked / checkpoint interval (interval = cadence x baseline step time);
* ``step slowdown``: mean step time (saves excluded) against the baseline's: steps slowed
  down by a background write competing for the CPU and memory bandwidth;
* ``cost``: (time blocked + extra step time) / baseline training time: the whole
  training-side cost. The baseline runs before and after, and their mean is used: on a
  shared machine the load drifts.

Then, for other cadences, the stall share each mode would have, from the measured per-save
figures: synchronous ``blocked / interval``; asynchronous ``(snapshot + max(0, write -
interval)) / interval`` (a save waits for the previous one still in flight).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from airflow_spot_training.examples.regression import make_data, make_model  # noqa: E402
from airflow_spot_training.runtime.checkpoint import CheckpointManager  # noqa: E402
from airflow_spot_training.runtime.torch_state import TorchCheckpointer  # noqa: E402

DEFAULT_CADENCE = 20  # steps: examples/regression.py --checkpoint-every
CADENCES = [10, 20, 50, 100, 500]


@dataclass
class Workload:
    name: str
    steps: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]
    scheduler: Any = None


def example_workload(steps: int) -> Workload:
    torch.manual_seed(0)
    x, y = make_data(0)
    model = make_model(x.shape[1], 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, x.shape[0], (64,), generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        optimizer.step()
        scheduler.step()

    return Workload("example", steps, model, optimizer, step, scheduler)


def gigabyte_workload(steps: int) -> Workload:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8192, 8192, bias=False), nn.Tanh(), nn.Linear(8192, 8192, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batch = torch.randn(8, 8192)

    def step() -> None:
        optimizer.zero_grad()
        model(batch).square().mean().backward()
        optimizer.step()

    step()  # allocate the momentum buffers: the state is whole from the first save
    return Workload("1gb", steps, model, optimizer, step)


def state_bytes(workload: Workload) -> int:
    tensors = list(workload.model.state_dict().values())
    for per_param in workload.optimizer.state_dict()["state"].values():
        tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Run:
    seconds: float = 0.0
    step_times: list[float] = field(default_factory=list)  # the training step alone, saves excluded
    blocked: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)

    @property
    def step_seconds(self) -> float:
        return statistics.fmean(self.step_times)


def run(workload: Workload, mode: str, uri: str, storage_options: dict[str, Any], cadence: int) -> Run:
    manager = CheckpointManager(uri, keep_last=1, storage_options=storage_options)
    ckpt = TorchCheckpointer(manager, model=workload.model, optimizer=workload.optimizer,
                             scheduler=workload.scheduler, config={"bench": workload.name})
    result = Run()

    def timed(future: Any, submitted: float) -> None:  # in the writer thread, when the commit is done
        future.add_done_callback(lambda _: result.write.append(time.perf_counter() - submitted))

    started = time.perf_counter()
    for step in range(1, workload.steps + 1):
        before_step = time.perf_counter()
        workload.step()
        result.step_times.append(time.perf_counter() - before_step)
        if mode == "none" or step % cadence:
            continue
        before = time.perf_counter()
        if mode == "sync":
            ckpt.save(step)
            result.write.append(time.perf_counter() - before)
        else:
            ckpt.wait()
            waited = time.perf_counter() - before
            future = ckpt.save_async(step)
            submitted = time.perf_counter()
            timed(future, submitted)
            result.snapshot.append(submitted - before - waited)
        result.blocked.append(time.perf_counter() - before)
    if mode == "async":
        ckpt.wait()
    result.seconds = time.perf_counter() - started
    return result


def share_at(cadence: int, step_seconds: float, mode: str, sync_blocked: float, snapshot: float,
             write: float) -> float:
    interval = cadence * step_seconds
    if mode == "sync":
        return sync_blocked / interval
    return (snapshot + max(0.0, write - interval)) / interval


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, dict[str, Any]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint,
                                                                       "region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="stall-bench")
    return proc, options


def bench(workload_factory: Callable[[int], Workload], steps: int, store: str, cadence: int) -> dict[str, Any]:
    workload = workload_factory(steps)
    size = state_bytes(workload)
    moto, options = (None, {}) if store == "local" else start_moto()
    tmp = tempfile.mkdtemp(prefix="stall-bench-")
    try:
        runs: dict[str, Run] = {}
        for mode in ("none", "sync", "async", "none-again"):  # a baseline before and after: load drifts
            uri = os.path.join(tmp, mode) if store == "local" else f"s3://stall-bench/{workload.name}-{mode}"
            runs[mode] = run(workload, mode.removesuffix("-again"), uri, options, cadence)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if moto is not None:
            moto.terminate()
            moto.wait()
    step_seconds = (runs["none"].step_seconds + runs["none-again"].step_seconds) / 2
    interval = cadence * step_seconds
    out: dict[str, Any] = {"workload": workload.name, "store": store, "state_bytes": size, "steps": steps,
                           "cadence_steps": cadence, "step_seconds": step_seconds, "interval_seconds": interval}
    median = statistics.median
    for mode in ("sync", "async"):
        r = runs[mode]
        slowdown = r.step_seconds / step_seconds - 1
        out[mode] = {
            "saves": len(r.blocked),
            "blocked_per_save": median(r.blocked),
            "share": median(r.blocked) / interval,
            "step_slowdown": slowdown,
            "cost": (sum(r.blocked) + slowdown * step_seconds * steps) / (step_seconds * steps),
            "write_per_save": median(r.write) if r.write else None,
            "snapshot_per_save": median(r.snapshot) if r.snapshot else None,
        }
    sync_blocked = out["sync"]["blocked_per_save"]
    snapshot, write = out["async"]["snapshot_per_save"], out["async"]["write_per_save"] or sync_blocked
    out["by_cadence"] = {
        n: {mode: share_at(n, step_seconds, mode, sync_blocked, snapshot, write) for mode in ("sync", "async")}
        for n in CADENCES
    }
    return out


def report(result: dict[str, Any]) -> None:
    mib = result["state_bytes"] / 2**20
    print(f"\n== {result['workload']} ({mib:,.1f} MiB state), store {result['store']}: "
          f"{result['step_seconds'] * 1000:.2f} ms/step, a save every {result['cadence_steps']} steps "
          f"= every {result['interval_seconds']:.3f} s")
    print(f"{'mode':<6} {'saves':>5} {'blocked/save':>13} {'share':>7} {'step slowdown':>14} {'cost':>7} "
          f"{'write/save':>11}")
    for mode in ("sync", "async"):
        r = result[mode]
        write = "" if r["write_per_save"] is None else f"{r['write_per_save']:.4f} s"
        print(f"{mode:<6} {r['saves']:>5} {r['blocked_per_save']:>11.4f} s {r['share'] * 100:>6.1f}% "
              f"{r['step_slowdown'] * 100:>13.1f}% {r['cost'] * 100:>6.1f}% {write:>11}")
    print("stall share by cadence (steps between saves; derived from the per-save figures above):")
    print(f"{'cadence':>8} {'interval':>10} {'sync':>8} {'async':>8}")
    for n, shares in result["by_cadence"].items():
        print(f"{n:>8} {n * result['step_seconds']:>9.2f}s {shares['sync'] * 100:>7.1f}% {shares['async'] * 100:>7.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=("local", "s3", "both"), default="local")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workload", choices=("example", "1gb", "both"), default="both")
    p.add_argument("--cadence", type=int, default=DEFAULT_CADENCE)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(1)  # one core for the training: the machine is shared
    stores = ["local", "s3"] if args.store == "both" else [args.store]
    results = []
    for store in stores:
        if args.workload in ("example", "both"):
            results.append(bench(example_workload, 400 if args.quick else 4000, store, args.cadence))
            report(results[-1])
        if args.workload in ("1gb", "both"):
            results.append(bench(gigabyte_workload, 2 * args.cadence if args.quick else 5 * args.cadence, store,
                                 args.cadence))
            report(results[-1])
    print(f"\nload average at the end: {' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1 / 5 / 15 min), "
          f"{os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
