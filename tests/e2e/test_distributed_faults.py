"""Fault injection against a distributed Airflow made of real processes.

One cluster for the session (see conftest.py): PostgreSQL, Redis, CeleryExecutor,
scheduler, dag-processor, two triggerers, one Celery worker, api-server, all with
the environment of docker-compose.yaml. Runs are triggered and inspected through
the REST API. Each test says what it injects and what it checks; the evidence of
how many training processes ran is what the trainings themselves recorded
(``<checkpoint prefix>/_evidence/starts.jsonl``, one line per process start) and
the local backend's attempt directories (one per launched attempt).
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest

from airflow_spot_training.backends.local import request_preemption
from tests.e2e.airflow_cluster import TRIGGERERS, AirflowCluster

FLEET_TASKS = 11  # per run of e2e_fleet (tests/e2e/dags/e2e_spot_training.py)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


# =========================================================================================
# evidence
# =========================================================================================
def starts(prefix: str) -> list[dict]:
    """One entry per training process start, as the training recorded it."""
    path = Path(prefix) / "_evidence" / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def attempt_dirs(cluster: AirflowCluster, key: str) -> list[Path]:
    return sorted((cluster.state_dir / key).glob("attempt-*"))


def status(attempt_dir: Path) -> dict:
    try:
        return json.loads((attempt_dir / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def assert_ledger_complete(ledger: dict, *, preemptions: int, tries: list[int]) -> None:
    """The ledger tells the whole story: every attempt ended, the last succeeded, counts add up."""
    attempts = ledger["attempts"]
    assert ledger["outcome"] == "succeeded", ledger
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["outcome"] in ("preempted", "succeeded") for a in attempts), attempts
    assert [a["outcome"] for a in attempts].count("succeeded") == 1 and attempts[-1]["outcome"] == "succeeded"
    assert ledger["preemptions"] == preemptions == sum(a["preemptions"] for a in attempts)
    assert len(attempts) == preemptions + 1
    assert ledger["tries"] == tries
    steps = ledger["total_steps"]
    assert ledger["final_checkpoint_step"] == steps
    # the running sum proves no step was lost or counted twice across the relaunches
    assert ledger["metrics"] == {"steps": steps, "total": steps * (steps - 1) // 2}


def assert_one_process_per_attempt(cluster: AirflowCluster, ledger: dict) -> list[dict]:
    """Exactly one training process started for each attempt in the ledger, and no other attempt ran."""
    recorded = starts(ledger["checkpoint_prefix"])
    numbers = [a["number"] for a in ledger["attempts"]]
    assert sorted(s["attempt"] for s in recorded) == numbers, recorded
    assert [p.name for p in attempt_dirs(cluster, ledger["run_key"])] == [f"attempt-{n}" for n in numbers]
    return sorted(recorded, key=lambda s: s["attempt"])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def ledgers(cluster: AirflowCluster, dag_id: str, run_id: str) -> dict[str, dict]:
    return {ti["task_id"]: cluster.xcom(dag_id, run_id, ti["task_id"])
            for ti in cluster.task_instances(dag_id, run_id)}


def deferred(cluster: AirflowCluster, dag_id: str, run_ids: list[str]) -> int:
    return sum(ti["state"] == "deferred" for r in run_ids for ti in cluster.task_instances(dag_id, r))


# =========================================================================================
# the scenarios
# =========================================================================================
def test_kill_9_a_triggerer_while_22_trainings_are_deferred(airflow_cluster: AirflowCluster):
    """Injected: SIGKILL to one triggerer's whole process tree while 22 trainings are deferred.

    Checked: the other triggerer takes over the dead one's triggers; every run succeeds; each
    training ran as exactly one attempt with exactly one process; every ledger is complete.
    """
    cluster, dag = airflow_cluster, "e2e_fleet"
    cluster.wait_for_dag(dag)
    runs = [cluster.trigger(dag), cluster.trigger(dag)]

    def all_launched() -> bool:  # 20 or more deferred, and none still on its way to deferring
        states = Counter(ti["state"] for r in runs for ti in cluster.task_instances(dag, r))
        return states["deferred"] >= 20 and states["deferred"] + states["success"] == 2 * FLEET_TASKS

    cluster.wait_until(all_launched, 240, "the 22 trainings to be launched and deferred")
    held = cluster.wait_until(
        lambda: (h := cluster.triggers_by_triggerer()) and None not in h and h, 60,
        "the triggerers to claim every trigger")
    victim = max(TRIGGERERS, key=lambda t: held.get(t, 0))
    survivor = next(t for t in TRIGGERERS if t != victim)
    victim_triggers = {r[0] for r in cluster.sql("SELECT id FROM trigger WHERE triggerer_id = %s",
                                                 [cluster.triggerer_job_ids[victim]])}
    assert victim_triggers, held
    assert deferred(cluster, dag, runs) >= 20

    cluster.kill_component(victim, signal.SIGKILL)

    survivor_id = cluster.triggerer_job_ids[survivor]
    taken_over: set[int] = set()

    def victims_moved() -> bool:
        rows = cluster.sql("SELECT id, triggerer_id FROM trigger WHERE id = ANY(%s)", [list(victim_triggers)])
        taken_over.update(i for i, owner in rows if owner == survivor_id)
        return all(owner == survivor_id for _, owner in rows)

    cluster.wait_until(victims_moved, 120, f"{survivor} to take over {victim}'s triggers")
    assert taken_over, "the survivor never held one of the dead triggerer's triggers"
    for run_id in runs:
        assert cluster.wait_for_run(dag, run_id, timeout=300) == "success"
    for run_id in runs:
        for task_id, ledger in ledgers(cluster, dag, run_id).items():
            assert_ledger_complete(ledger, preemptions=0, tries=[1])
            assert_one_process_per_attempt(cluster, ledger)
    cluster.start_component(victim)  # back to two triggerers for the next scenarios


def test_worker_killed_between_launch_and_defer(airflow_cluster: AirflowCluster):
    """Injected: the task process hangs right after launch() returned (the training is running,
    nothing deferred yet) and the Celery worker's whole process tree gets SIGKILL there.

    Checked: Airflow retries the task (try 2), the retry re-attaches to the running attempt
    instead of launching one, exactly one training process ran for it, the run succeeds.
    """
    cluster, dag = airflow_cluster, "e2e_worker_crash"
    cluster.wait_for_dag(dag)
    run_id = cluster.trigger(dag)
    key = cluster.run_key(dag, run_id, "train")
    marker = cluster.hold_dir / f"{key}-a1.held"
    cluster.wait_until(marker.exists, 120, "the task to launch attempt 1 and hang before deferring")
    task_pid = int(cluster.wait_until(lambda: marker.read_text(), 10, "the marker's pid"))
    launch = json.loads((cluster.state_dir / key / "attempt-1" / "launch.json").read_text())
    assert psutil.pid_exists(task_pid) and psutil.pid_exists(launch["supervisor_pid"])
    assert cluster.task_instance(dag, run_id, "train")["state"] == "running"

    cluster.kill_component("celery-worker", signal.SIGKILL)
    assert gone(task_pid) and not gone(launch["supervisor_pid"])  # the worker died, the training did not
    cluster.start_component("celery-worker")

    assert cluster.wait_for_run(dag, run_id, timeout=300) == "success"
    ti = cluster.task_instance(dag, run_id, "train")
    assert ti["try_number"] == 2
    assert [t["state"] for t in cluster.tries(dag, run_id, "train")] == ["failed", "success"]
    ledger = cluster.xcom(dag, run_id, "train")
    assert_ledger_complete(ledger, preemptions=0, tries=[1, 2])
    assert ledger["attempts"][0]["try_number"] == 1  # launched by try 1, finished under try 2
    recorded = assert_one_process_per_attempt(cluster, ledger)
    assert len(recorded) == 1
    again = json.loads((cluster.state_dir / key / "attempt-1" / "launch.json").read_text())
    assert again["supervisor_pid"] == launch["supervisor_pid"]


def test_scheduler_restarted_mid_run(airflow_cluster: AirflowCluster):
    """Injected: SIGKILL to the scheduler while trainings are deferred; it stays down until a
    training is reclaimed (an event only the scheduler can act on), then starts again.

    Checked: every run succeeds; each training was reclaimed once and relaunched once, resuming
    from the checkpoint the reclaimed attempt committed.
    """
    cluster, dag = airflow_cluster, "e2e_scheduler_restart"
    cluster.wait_for_dag(dag)
    runs = [cluster.trigger(dag), cluster.trigger(dag)]
    cluster.wait_until(lambda: deferred(cluster, dag, runs) >= 4, 120, "deferred trainings")

    cluster.kill_component("scheduler", signal.SIGKILL)
    keys = [cluster.run_key(dag, r, f"train_{i:02d}") for r in runs for i in range(4)]
    cluster.wait_until(lambda: any(status(cluster.state_dir / k / "attempt-1").get("state") == "preempted"
                                   for k in keys), 60, "a reclaim while the scheduler is down")
    cluster.start_component("scheduler")

    for run_id in runs:
        assert cluster.wait_for_run(dag, run_id, timeout=300) == "success"
        for ledger in ledgers(cluster, dag, run_id).values():
            assert_ledger_complete(ledger, preemptions=1, tries=[1])
            first, second = assert_one_process_per_attempt(cluster, ledger)
            assert first["start_step"] == 0
            assert second["start_step"] == ledger["attempts"][0]["checkpoint_step"] > 0


def test_every_running_training_reclaimed_at_once(airflow_cluster: AirflowCluster):
    """Injected: a reclaim of all 6 running spot trainings in the same instant
    (the local backend's preempt-now hook: notice, then hard kill, as a cloud does).

    Checked: all 6 resume from their notice checkpoints and finish; each ledger counts exactly
    one preemption; the relaunches stay on spot (threshold 3 not reached).
    """
    cluster, dag = airflow_cluster, "e2e_preempt_all"
    cluster.wait_for_dag(dag)
    run_id = cluster.trigger(dag)
    tasks = [f"train_{i:02d}" for i in range(6)]
    keys = [cluster.run_key(dag, run_id, t) for t in tasks]
    prefixes = [cluster.checkpoint_base / dag / run_id / t for t in tasks]
    cluster.wait_until(lambda: deferred(cluster, dag, [run_id]) == 6 and all(starts(p) for p in prefixes),
                       120, "6 deferred, running trainings")

    reclaimed = [request_preemption(cluster.state_dir / k / "attempt-1") for k in keys]
    assert reclaimed == [True] * 6

    assert cluster.wait_for_run(dag, run_id, timeout=300) == "success"
    all_ledgers = ledgers(cluster, dag, run_id)
    assert sum(lg["preemptions"] for lg in all_ledgers.values()) == 6
    for ledger in all_ledgers.values():
        assert_ledger_complete(ledger, preemptions=1, tries=[1])
        assert [a["capacity"] for a in ledger["attempts"]] == ["spot", "spot"]
        assert ledger["attempts"][0]["reason"].startswith("spot capacity reclaimed")
        first, second = assert_one_process_per_attempt(cluster, ledger)
        assert second["start_step"] == ledger["attempts"][0]["checkpoint_step"] > 0


def test_checkpoint_write_interrupted_resumes_from_previous_commit(airflow_cluster: AirflowCluster):
    """Injected: a reclaim whose notice checkpoint stalls between payload and commit record,
    so the hard kill at the end of the notice window cuts the write short.

    Checked: the relaunch resumes from the previous committed checkpoint (older than the cut
    write, which it sees as uncommitted), and the training still ends with the right result.
    """
    cluster, dag = airflow_cluster, "e2e_checkpoint_write_interrupted"
    cluster.wait_for_dag(dag)
    run_id = cluster.trigger(dag)
    assert cluster.wait_for_run(dag, run_id, timeout=300) == "success"
    ledger = cluster.xcom(dag, run_id, "train")
    assert_ledger_complete(ledger, preemptions=1, tries=[1])
    first, second = assert_one_process_per_attempt(cluster, ledger)
    log = (cluster.state_dir / ledger["run_key"] / "attempt-1" / "training.log").read_text().splitlines()
    cut = [json.loads(line)["step"] for line in log if '"stalling-save"' in line]
    assert len(cut) == 1, log
    committed = ledger["attempts"][0]["checkpoint_step"]
    assert second["start_step"] == committed and 0 < committed < cut[0]
    assert cut[0] in second["uncommitted_steps"]


def test_mark_deferred_task_failed_stops_its_training(airflow_cluster: AirflowCluster):
    """Injected: PATCH the deferred task instance to ``failed`` through the REST API.

    Checked: the triggerer runs the trigger's on_kill, which stops the attempt: the supervisor
    and the training process are gone and the attempt's status says ``stopped``.
    """
    cluster, dag = airflow_cluster, "e2e_mark_failed"
    cluster.wait_for_dag(dag)
    run_id = cluster.trigger(dag)
    key = cluster.run_key(dag, run_id, "train")
    attempt = cluster.state_dir / key / "attempt-1"
    prefix = cluster.checkpoint_base / dag / run_id / "train"
    assigned = "SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL"
    cluster.wait_until(lambda: deferred(cluster, dag, [run_id]) == 1 and starts(prefix)
                       and cluster.sql(assigned)[0][0] >= 1, 120, "a deferred, running training")
    training_pid = starts(prefix)[0]["pid"]
    supervisor_pid = json.loads((attempt / "launch.json").read_text())["supervisor_pid"]
    assert status(attempt)["state"] == "running"

    cluster.mark_task_instance(dag, run_id, "train", "failed")

    cluster.wait_until(lambda: status(attempt).get("state") == "stopped", 60, "the attempt to be stopped")
    cluster.wait_until(lambda: gone(training_pid) and gone(supervisor_pid), 30,
                       "the training processes to exit")
    assert cluster.task_instance(dag, run_id, "train")["state"] == "failed"
    assert len(starts(prefix)) == 1 and attempt_dirs(cluster, key) == [attempt]
