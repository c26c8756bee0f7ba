"""What the synced checkpoint folder costs the training: step time with and without the uploader.

    python benchmarks/folder_sync_cost.py                  # prefix on a local directory
    python benchmarks/folder_sync_cost.py --store s3       # prefix on moto's S3 (loopback, own process)
    python benchmarks/folder_sync_cost.py --quick

The training (``benchmarks/folder_sync_training.py``) holds a 1 GiB state (512 MiB of
weights, 512 MiB of SGD momentum), trains on one core and saves the state into its
local folder every ``--every`` steps, as a framework does. It runs alternately

* ``without``: straight, the folder is not synced;
* ``with``: under the folder-sync wrapper, which uploads each finished 1 GiB checkpoint
  to the prefix in the background (payload, then commit record; keep_last=2);
* ``with, capped``: the same with ``--max-bytes-per-second`` (spreads the upload's
  memory and disk traffic over the interval).

Reported: the mean training step time (saves excluded: the local save costs the same
with and without the sync) and how much slower it is with the sync; the target is at
most 5%. Each configuration runs ``--rounds`` times, interleaved, since the load on a
shared machine drifts. And, within each synced run, the steps that overlapped an upload
against the others of the same run: ``cost`` = their slowdown x the share of steps that
overlapped, the uploader's cost with the machine's load drift taken out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.checkpoint_stall import start_moto  # noqa: E402

TRAINING = [sys.executable, str(ROOT / "benchmarks" / "folder_sync_training.py")]


def run(kind: str, steps: int, every: int, workdir: Path, prefix: str, storage_env: dict[str, str],
        cap: float | None) -> dict:
    folder = workdir / "folder"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, **storage_env, "PYTHONPATH": str(ROOT), "SPOT_TRAINING_CHECKPOINT_URI": prefix,
           "SPOT_TRAINING_ATTEMPT": "1", "SPOT_TRAINING_CAPACITY": "spot", "SPOT_TRAINING_RUN_KEY": "bench",
           "SPOT_TRAINING_CHECKPOINT_DIR": str(folder)}
    command = [*TRAINING, str(steps), str(every)]
    if kind != "without":
        wrapper = [sys.executable, "-m", "airflow_spot_training.runtime.folder_sync", "--dir", str(folder),
                   "--keep-last", "2", "--finished-by", "marker"]
        if cap:
            wrapper += ["--max-bytes-per-second", str(cap)]
        command = [*wrapper, "--", *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    result = next(line for line in lines if "step_seconds" in line)
    committed = [line for line in lines if line.get("action") == "committed"]
    result["uploads"] = len(committed)
    result["upload_seconds"] = statistics.fmean(c["seconds"] for c in committed) if committed else None
    uploading = [(c["at"] - c["seconds"], c["at"]) for c in committed]
    during, outside = [], []
    for begin, end in result.pop("spans"):
        overlaps = any(begin < u_end and end > u_begin for u_begin, u_end in uploading)
        (during if overlaps else outside).append(end - begin)
    result["during_upload"], result["outside_upload"] = during, outside
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=("local", "s3"), default="local")
    p.add_argument("--every", type=int, default=20, help="steps between two checkpoints")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cap", type=float, default=256 * 2**20, help="bytes/s for the capped run")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds = 2 * args.every + 5, 1
    workdir = Path(tempfile.mkdtemp(prefix="folder-sync-bench-"))
    moto = None
    storage_env: dict[str, str] = {}
    prefix = str(workdir / "prefix")
    if args.store == "s3":
        moto, options = start_moto()
        endpoint = options["client_kwargs"]["endpoint_url"]
        storage_env = {"FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        prefix = "s3://stall-bench/folder-sync"
    configs = [("without", None), ("with", None), ("with, capped", args.cap)]
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    try:
        for _ in range(args.rounds):
            for name, cap in configs:
                if args.store == "local":
                    shutil.rmtree(workdir / "prefix", ignore_errors=True)
                results[name].append(run(name, args.steps, args.every, workdir, prefix, storage_env, cap))
                r = results[name][-1]
                print(f"  {name:<13} step {r['step_seconds'] * 1000:8.1f} ms   save {r['save_seconds']:.2f} s   "
                      f"uploads {r['uploads']}" + (f" ({r['upload_seconds']:.1f} s each)" if r["upload_seconds"] else ""),
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if moto is not None:
            moto.terminate()
            moto.wait()
    base = statistics.fmean(r["step_seconds"] for r in results["without"])
    print(f"\n1 GiB state, a checkpoint every {args.every} steps, prefix on {args.store}, "
          f"{args.steps} steps x {args.rounds} round(s)")
    print(f"load average during the runs: {' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1 / 5 / 15 min), "
          f"{os.cpu_count()} CPUs")
    print(f"{'run':<14} {'step time':>10} {'vs without':>11} {'interval':>9} {'upload/ckpt':>12}")
    for name, _ in configs:
        step = statistics.fmean(r["step_seconds"] for r in results[name])
        uploads = [r["upload_seconds"] for r in results[name] if r["upload_seconds"]]
        upload = f"{statistics.fmean(uploads):.1f} s" if uploads else ""
        print(f"{name:<14} {step * 1000:8.1f}ms {(step / base - 1) * 100:>+10.1f}% {args.every * base:>8.1f}s "
              f"{upload:>12}")
    print("\nwithin each synced run (the same minutes, so the machine's load drift cancels out):")
    print(f"{'run':<14} {'steps while uploading':>22} {'other steps':>12} {'slower':>8} {'share of steps':>15} "
          f"{'cost':>6}")
    for name, _ in configs[1:]:
        during = [t for r in results[name] for t in r["during_upload"]]
        outside = [t for r in results[name] for t in r["outside_upload"]]
        if not during or not outside:
            continue
        slower = statistics.fmean(during) / statistics.fmean(outside) - 1
        share = len(during) / (len(during) + len(outside))
        print(f"{name:<14} {statistics.fmean(during) * 1000:>20.1f}ms {statistics.fmean(outside) * 1000:>10.1f}ms "
              f"{slower * 100:>+7.1f}% {share * 100:>14.0f}% {slower * share * 100:>+5.1f}%")


if __name__ == "__main__":
    main()
