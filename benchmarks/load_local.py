"""Load benchmark: hundreds of concurrent spot trainings on a distributed Airflow.

One command::

    PYTHONPATH=. .venv/bin/python benchmarks/load_local.py            # 10 runs x 20 = 200 trainings

Starts the same process topology as the end-to-end suite (PostgreSQL metadata DB,
Redis, CeleryExecutor worker, scheduler, dag-processor, two triggerers, api-server;
see tests/e2e/airflow_cluster.py), triggers ``--runs`` runs of
``benchmarks/dags/spot_training_load.py`` (``--tasks-per-run`` tiny trainings each, on
the local backend, with random spot reclaims), waits for all of them through the REST
API, and prints:

* the triggerers' CPU seconds and peak RSS (each process tree, sampled with psutil);
* the metadata DB's rates from ``pg_stat_database`` (transactions and tuples per second);
* the peak number of trainings running at once, wall time, preemptions, escalations;
* whether every run finished and every ledger is consistent with the evidence the
  trainings and the local backend left (one process start per attempt, preempted
  attempt directories = counted preemptions, no lost or repeated step).

It takes several minutes and is not part of the test suite. Exit code 0 only when
every check passed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airflow_spot_training.core.contract import run_key  # noqa: E402
from tests.e2e.airflow_cluster import TRIGGERERS, AirflowCluster  # noqa: E402

DAG_ID = "spot_training_load"
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
               "tup_deleted", "blks_read", "blks_hit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tasks-per-run", type=int, default=20)
    p.add_argument("--steps", type=int, default=420,
                   help="steps of each training (long enough for all 200 to run at once)")
    p.add_argument("--step-seconds", type=float, default=1.0)
    p.add_argument("--preemptions-per-hour", type=float, default=20.0, help="reclaim rate of a spot attempt")
    p.add_argument("--poll-interval", type=float, default=2.0)
    p.add_argument("--worker-concurrency", type=int, default=8)
    p.add_argument("--idle-seconds", type=float, default=30,
                   help="measure the metadata DB's rates with nothing running first, for comparison")
    p.add_argument("--timeout", type=float, default=2400)
    p.add_argument("--work-dir", default=None, help="default: a new temporary directory")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p.parse_args(argv)


class Sampler(threading.Thread):
    """Every second: CPU and RSS of each triggerer's process tree; trainings running."""

    def __init__(self, cluster: AirflowCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop_event = threading.Event()
        self.cpu: dict[str, float] = {}
        self.cpu_start: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.idle_rss: dict[str, int] = {}
        self.peak_running = 0
        self.peak_triggers: dict[str, int] = {}
        self._seen: dict[str, dict[int, float]] = {}

    def _tree_cpu_rss(self, name: str) -> tuple[float, int]:
        seen = self._seen.setdefault(name, {})
        rss = 0
        for p in self.cluster.component_processes(name):
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system  # keeps the last value of processes that exit
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return sum(seen.values()), rss

    def sample(self) -> None:
        for name in TRIGGERERS:
            cpu, rss = self._tree_cpu_rss(name)
            self.cpu_start.setdefault(name, cpu)
            self.idle_rss.setdefault(name, rss)
            self.cpu[name] = cpu
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
        running = 0
        for status in self.cluster.state_dir.glob("*/attempt-*/status.json"):
            try:
                running += json.loads(status.read_text()).get("state") == "running"
            except (ValueError, FileNotFoundError):
                pass
        self.peak_running = max(self.peak_running, running)

    def run(self) -> None:
        tick = 0
        while not self.stop_event.wait(1.0):
            self.sample()
            tick += 1
            if tick % 5 == 0:
                for name, n in self.cluster.triggers_by_triggerer().items():
                    if name:
                        self.peak_triggers[name] = max(self.peak_triggers.get(name, 0), n)


def pg_counters(cluster: AirflowCluster) -> dict[str, int]:
    row = cluster.sql(f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = %s",
                      [cluster.db_name])[0]
    return dict(zip(PG_COUNTERS, row))


def table_reads(cluster: AirflowCluster) -> dict[str, tuple[int, int]]:
    """Per table: rows read by sequential scans, rows fetched through indexes."""
    rows = cluster.sql("SELECT relname, coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) "
                       "FROM pg_stat_user_tables")
    return {name: (seq, idx) for name, seq, idx in rows}


def check_ledger(cluster: AirflowCluster, run_id: str, task_id: str, ledger: dict, steps: int) -> list[str]:
    """Problems with one training's ledger, compared with the evidence on disk (empty: consistent)."""
    problems = []
    where = f"{run_id}/{task_id}"
    attempts = ledger.get("attempts") or []
    if ledger.get("outcome") != "succeeded":
        problems.append(f"{where}: outcome {ledger.get('outcome')}")
    if [a["number"] for a in attempts] != list(range(1, len(attempts) + 1)):
        problems.append(f"{where}: attempt numbers {[a['number'] for a in attempts]}")
    preempted = sum(a["outcome"] == "preempted" for a in attempts)
    if ledger.get("preemptions") != preempted:
        problems.append(f"{where}: {ledger.get('preemptions')} preemptions counted, {preempted} preempted attempts")
    key = run_key(DAG_ID, run_id, task_id, -1)
    if ledger.get("run_key") != key:
        problems.append(f"{where}: run key {ledger.get('run_key')} != {key}")
    dirs = sorted((cluster.state_dir / key).glob("attempt-*"), key=lambda d: int(d.name.split("-")[1]))
    if [d.name for d in dirs] != [f"attempt-{a['number']}" for a in attempts]:
        problems.append(f"{where}: attempt dirs {[d.name for d in dirs]} vs ledger {len(attempts)}")
    states = [json.loads((d / "status.json").read_text()).get("state") for d in dirs]
    if states != [a["outcome"] for a in attempts]:
        problems.append(f"{where}: backend states {states} vs ledger {[a['outcome'] for a in attempts]}")
    evidence = Path(ledger["checkpoint_prefix"]) / "_evidence" / "starts.jsonl"
    started = Counter(json.loads(line)["attempt"] for line in evidence.read_text().splitlines())
    for a, state, d in zip(attempts, states, dirs):
        n = started.get(a["number"], 0)
        if n > 1:
            problems.append(f"{where}: attempt {a['number']} started {n} training processes")
        elif n == 0 and not (state == "preempted" and _killed_before_start(d)):
            problems.append(f"{where}: attempt {a['number']} ({state}) never started its training")
    if ledger.get("metrics") != {"steps": steps, "total": steps * (steps - 1) // 2}:
        problems.append(f"{where}: metrics {ledger.get('metrics')} (a step lost or repeated)")
    if preempted >= 2 and attempts[-1]["capacity"] != "on_demand":
        problems.append(f"{where}: {preempted} preemptions but the last attempt ran on {attempts[-1]['capacity']}")
    return problems


def _killed_before_start(attempt_dir: Path) -> bool:
    """A reclaim can land before the training recorded its start (a notice in its first instant)."""
    status = json.loads((attempt_dir / "status.json").read_text())
    return status.get("details", {}).get("exit_code") in (-15, -9)


def _stop_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cluster's teardown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # stop every process, drop the database, flush Redis also when interrupted (even from nohup)
    signal.signal(signal.SIGTERM, _stop_cleanly)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="spot-load-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        "SPOT_BENCH_TASKS": str(args.tasks_per_run),
        "SPOT_BENCH_STEPS": str(args.steps),
        "SPOT_BENCH_STEP_SECONDS": str(args.step_seconds),
        "SPOT_BENCH_PREEMPTIONS_PER_HOUR": str(args.preemptions_per_hour),
        "SPOT_BENCH_POLL_INTERVAL": str(args.poll_interval),
    }
    total = args.runs * args.tasks_per_run
    print(f"==> {total} trainings ({args.runs} runs x {args.tasks_per_run}), {args.steps} steps x "
          f"{args.step_seconds} s, {args.preemptions_per_hour}/h reclaims, poll {args.poll_interval} s; "
          f"work dir {work}", flush=True)
    cluster = AirflowCluster(ROOT, work, ROOT / "benchmarks" / "dags", extra_env=env,
                             worker_concurrency=args.worker_concurrency)
    with cluster:
        cluster.wait_for_dag(DAG_ID)
        sampler = Sampler(cluster)
        sampler.sample()
        idle_before, idle_started = pg_counters(cluster), time.time()
        time.sleep(args.idle_seconds)
        idle = {k: v - idle_before[k] for k, v in pg_counters(cluster).items()}
        idle_seconds = time.time() - idle_started
        pg_before, tables_before = pg_counters(cluster), table_reads(cluster)
        started = time.time()
        sampler.start()
        runs = [cluster.trigger(DAG_ID, run_id=f"load-{i:03d}") for i in range(args.runs)]
        print(f"==> triggered {len(runs)} runs through the REST API", flush=True)
        states = {}
        deadline = started + args.timeout
        while len(states) < len(runs):
            for run_id in runs:
                if run_id not in states:
                    state = cluster.run_state(DAG_ID, run_id)
                    if state in ("success", "failed"):
                        states[run_id] = state
                        print(f"    {run_id}: {state} after {time.time() - started:.0f} s", flush=True)
            if time.time() > deadline:
                print("timed out", file=sys.stderr)
                break
            cluster.check_alive()
            time.sleep(5)
        wall = time.time() - started
        sampler.stop_event.set()
        sampler.join()
        sampler.sample()
        pg_after, tables_after = pg_counters(cluster), table_reads(cluster)

        problems: list[str] = []
        preemptions = escalated = attempts = 0
        for run_id in runs:
            for ti in cluster.task_instances(DAG_ID, run_id):
                if ti["state"] != "success":
                    problems.append(f"{run_id}/{ti['task_id']}: task {ti['state']}")
                    continue
                ledger = cluster.xcom(DAG_ID, run_id, ti["task_id"])
                problems += check_ledger(cluster, run_id, ti["task_id"], ledger, args.steps)
                preemptions += ledger["preemptions"]
                escalated += bool(ledger["escalations"])
                attempts += len(ledger["attempts"])

    pg = {k: pg_after[k] - pg_before[k] for k in PG_COUNTERS}
    reads = {t: (seq - tables_before.get(t, (0, 0))[0], idx - tables_before.get(t, (0, 0))[1])
             for t, (seq, idx) in tables_after.items()}
    top_tables = sorted(reads.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:6]
    figures = {
        "trainings": total,
        "runs": args.runs,
        "wall_seconds": round(wall, 1),
        "all_runs_succeeded": all(s == "success" for s in states.values()) and len(states) == len(runs),
        "ledgers_consistent": not problems,
        "attempts": attempts,
        "preemptions": preemptions,
        "escalated_to_on_demand": escalated,
        "peak_trainings_running": sampler.peak_running,
        "peak_triggers_per_triggerer": sampler.peak_triggers,
        "triggerer_cpu_seconds": {n: round(sampler.cpu[n] - sampler.cpu_start[n], 1) for n in TRIGGERERS},
        "triggerer_peak_rss_mib": {n: round(sampler.peak_rss[n] / 2**20) for n in TRIGGERERS},
        "triggerer_idle_rss_mib": {n: round(sampler.idle_rss[n] / 2**20) for n in TRIGGERERS},
        "db_transactions_per_second": round((pg["xact_commit"] + pg["xact_rollback"]) / wall, 1),
        "db_tuples_read_per_second": round((pg["tup_returned"] + pg["tup_fetched"]) / wall, 1),
        "db_tuples_written_per_second": round((pg["tup_inserted"] + pg["tup_updated"] + pg["tup_deleted"]) / wall,
                                              1),
        "db_counters_delta": pg,
        "db_rows_read_per_second_by_table": {t: {"seq_scan": round(seq / wall, 1), "index": round(idx / wall, 1)}
                                             for t, (seq, idx) in top_tables},
        "db_idle_transactions_per_second": round((idle["xact_commit"] + idle["xact_rollback"]) / idle_seconds, 1),
        "db_idle_tuples_read_per_second": round((idle["tup_returned"] + idle["tup_fetched"]) / idle_seconds, 1),
        "settings": vars(args),
    }
    cpu_total = sum(figures["triggerer_cpu_seconds"].values())
    print("\n==> results")
    print(f"trainings:                {total} in {args.runs} runs; all runs succeeded: "
          f"{figures['all_runs_succeeded']}; ledgers consistent: {figures['ledgers_consistent']}")
    print(f"wall time:                {wall:.0f} s; peak trainings running at once: {sampler.peak_running}")
    print(f"attempts / preemptions:   {attempts} / {preemptions}; escalated to on-demand: {escalated}")
    for n in TRIGGERERS:
        print(f"{n}:              CPU {figures['triggerer_cpu_seconds'][n]} s "
              f"({figures['triggerer_cpu_seconds'][n] / wall * 100:.1f}% of one core), "
              f"peak RSS {figures['triggerer_peak_rss_mib'][n]} MiB "
              f"(idle {figures['triggerer_idle_rss_mib'][n]} MiB), "
              f"peak triggers {sampler.peak_triggers.get(n, 0)}")
    print(f"triggerers together:      {cpu_total:.1f} CPU s = {cpu_total / wall * 100:.1f}% of one core")
    print(f"metadata DB:              {figures['db_transactions_per_second']} transactions/s, "
          f"{figures['db_tuples_read_per_second']} tuples read/s, "
          f"{figures['db_tuples_written_per_second']} tuples written/s "
          f"(idle: {figures['db_idle_transactions_per_second']} transactions/s, "
          f"{figures['db_idle_tuples_read_per_second']} tuples read/s)")
    for table, (seq, idx) in top_tables:
        print(f"    {table:<28} {seq / wall:>10.1f} rows/s by sequential scan, {idx / wall:>8.1f} by index")
    for line in problems[:30]:
        print("PROBLEM: " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if figures["all_runs_succeeded"] and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
