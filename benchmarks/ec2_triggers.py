"""N concurrent EC2 triggers in one event loop: ours (shared DescribeInstances) against the peer.

Usage::

    python -m benchmarks.ec2_triggers --n 100 1000 --interval 5 --window 3

For each N, and for each side - ``ours`` (``SpotTrainingTrigger`` with
``EC2SpotBackend``) and ``peer`` (the Amazon provider's ``EC2StateSensorTrigger``) -
a fresh worker process starts a moto server on a free loopback port
(:mod:`benchmarks.moto_counting_server`), launches N instances, runs N triggers in
one asyncio event loop the way a triggerer does, and measures over ``--window``
poll intervals:

* DescribeInstances calls per interval (counted by the server);
* CPU seconds per trigger per interval (the worker's process CPU time);
* peak memory per trigger (growth of the process's peak RSS once the triggers run);
* time from reclaim to event: all N instances are reclaimed in one call, and each
  trigger's first event is timed (median, p95, max).

Both sides use the same moto server build, N, interval and machine, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# =========================================================================================
# worker: one side, one N
# =========================================================================================
def build_triggers(side: str, instance_ids: list[str], interval: float) -> list[Any]:
    if side == "peer":
        from airflow.providers.amazon.aws.triggers.ec2 import EC2StateSensorTrigger

        return [EC2StateSensorTrigger(instance_id=i, target_state="terminated", aws_conn_id="aws_default",
                                      region_name=REGION, poll_interval=interval) for i in instance_ids]
    from airflow_spot_training.backends.ec2 import EC2SpotBackend
    from airflow_spot_training.triggers.spot_training import SpotTrainingTrigger

    classpath, kwargs = EC2SpotBackend("train", image_id="ami-0", instance_types=["c5.large"], region_name=REGION,
                                       describe_interval=interval).serialize()
    return [SpotTrainingTrigger(
        backend_classpath=classpath, backend_kwargs=kwargs, attempt=1, poll_interval=interval,
        progress_log_interval=3600, checkpoint_prefix=f"s3://bench/ckpt/{i}",
        handle={"instance_id": i, "token": i, "attempt": 1, "capacity": "spot", "launched_at": time.time(),
                "result_uri": f"s3://bench/ckpt/{i}/_results/attempt-1.json"},
    ) for i in instance_ids]


async def run_side(side: str, triggers: list[Any], interval: float, window: int, count_file: Path,
                   reclaim: Any) -> dict[str, Any]:
    events: dict[int, float] = {}
    detected: dict[int, float] = {}
    polls = [0]

    def timed_poll(k: int, poll: Any) -> Any:
        async def wrapper(handle: dict[str, Any]) -> Any:
            status = await poll(handle)
            polls[0] += 1
            if status.is_final and k not in detected:
                detected[k] = time.monotonic()
            return status
        return wrapper

    if side == "ours":  # instrument only: when the backend saw the reclaim, before the final checkpoint read
        for k, trigger in enumerate(triggers):
            trigger.backend.poll = timed_poll(k, trigger.backend.poll)

    async def watch(k: int, trigger: Any) -> None:
        async for _ in trigger.run():
            events[k] = time.monotonic()
            return

    rss_before = peak_rss_mb()
    started = time.monotonic()
    tasks = [asyncio.ensure_future(watch(k, t)) for k, t in enumerate(triggers)]
    # warm-up: clients created, pollers in step, and each of our triggers' first progress line done
    # (at 2 poll intervals it reads the checkpoint prefix: N listings at once when N triggers start
    # together), so the window measures steady-state polling
    await asyncio.sleep(3 * interval)
    if side == "ours":
        for _ in range(40):
            before = polls[0]
            await asyncio.sleep(interval)
            if polls[0] - before >= 0.9 * len(triggers):
                break
    warmup_s = time.monotonic() - started
    calls0, cpu0, t0, polls0 = count_file.stat().st_size, time.process_time(), time.monotonic(), polls[0]
    await asyncio.sleep(window * interval)
    calls1, cpu1, t1, polls1 = count_file.stat().st_size, time.process_time(), time.monotonic(), polls[0]
    # a status check is one trigger learning its instance's state: one DescribeInstances for the peer
    checks = (polls1 - polls0) if side == "ours" else (calls1 - calls0)
    rss_running = peak_rss_mb()
    early = len(events)
    reclaim_started = time.monotonic()
    await asyncio.to_thread(reclaim)
    reclaimed_at = time.monotonic()  # every instance is terminated once the call returns
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(600.0, 20 * interval))
    latencies = sorted(events[k] - reclaimed_at for k in range(len(triggers)))
    seen = sorted(detected[k] - reclaimed_at for k in detected)
    intervals = (t1 - t0) / interval
    n = len(triggers)
    return {
        "side": side,
        "n": n,
        "interval_s": interval,
        "describe_calls_per_interval": round((calls1 - calls0) / intervals, 2),
        "cpu_s_per_trigger_per_interval": (cpu1 - cpu0) / intervals / n,
        "cpu_s_window": round(cpu1 - cpu0, 3),
        "status_checks_per_trigger_per_interval": round(checks / intervals / n, 3),
        "cpu_ms_per_status_check": round((cpu1 - cpu0) / max(checks, 1) * 1000, 3),
        "peak_rss_mb_per_trigger": round(max(0.0, rss_running - rss_before) / n, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "events_before_reclaim": early,
        "warmup_s": round(warmup_s, 1),
        "reclaim_call_s": round(reclaimed_at - reclaim_started, 3),
        "reclaim_to_event_s": _spread(latencies),
        "reclaim_to_detection_s": _spread(seen) if seen else None,
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "p95": round(values[int(0.95 * (len(values) - 1))], 3),
            "max": round(values[-1], 3)}


def worker(side: str, n: int, interval: float, window: int) -> dict[str, Any]:
    port = free_port()
    count_file = Path(tempfile.mkdtemp()) / "describe-calls"
    count_file.touch()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.moto_counting_server", str(port), str(count_file)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update({
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": {"endpoint_url": endpoint,
                                                                                  "region_name": REGION}}),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        import logging

        import boto3

        logging.disable(logging.WARNING)
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
        boto3.client("s3", region_name=REGION, endpoint_url=endpoint).create_bucket(Bucket="bench")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ids: list[str] = []
        while len(ids) < n:
            batch = min(250, n - len(ids))
            launched = ec2.run_instances(ImageId=image, MinCount=batch, MaxCount=batch, InstanceType="c5.large")
            ids += [i["InstanceId"] for i in launched["Instances"]]

        def reclaim() -> None:
            for start in range(0, len(ids), 1000):
                ec2.terminate_instances(InstanceIds=ids[start:start + 1000])

        triggers = build_triggers(side, ids, interval)
        return asyncio.run(run_side(side, triggers, interval, window, count_file, reclaim))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)


# =========================================================================================
# the command
# =========================================================================================
def table(results: list[dict[str, Any]]) -> str:
    head = (f"| {'N':>5} | {'trigger':<26} | {'DescribeInstances / interval':>28} | {'CPU ms / trigger / interval':>27} "
            f"| {'checks / trigger / interval':>27} | {'CPU ms / check':>14} "
            f"| {'peak RSS KiB / trigger':>22} | {'reclaim -> event median / p95 / max (s)':>39} "
            f"| {'reclaim -> detection median / max (s)':>37} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    names = {"ours": "SpotTrainingTrigger (ec2)", "peer": "EC2StateSensorTrigger"}
    for r in results:
        lat = r["reclaim_to_event_s"]
        lines.append(
            f"| {r['n']:>5} | {names[r['side']]:<26} | {r['describe_calls_per_interval']:>28} "
            f"| {r['cpu_s_per_trigger_per_interval'] * 1000:>27.3f} "
            f"| {r['status_checks_per_trigger_per_interval']:>27} | {r['cpu_ms_per_status_check']:>14} "
            f"| {r['peak_rss_mb_per_trigger'] * 1024:>22.1f} "
            f"| {lat['median']:>11} / {lat['p95']} / {lat['max']:<17} "
            f"| {_detection(r):>37} |"
        )
    return "\n".join(lines)


def _detection(result: dict[str, Any]) -> str:
    seen = result.get("reclaim_to_detection_s")
    return f"{seen['median']} / {seen['max']}" if seen else "= event"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=3, help="poll intervals measured")
    parser.add_argument("--sides", nargs="+", default=["ours", "peer"], choices=["ours", "peer"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n[0], args.interval, args.window)))
        return 0
    results = []
    for n in args.n:
        for side in args.sides:
            print(f"==> N={n} {side} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.ec2_triggers", "--worker", side, "--n", str(n),
                 "--interval", str(args.interval), "--window", str(args.window)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
