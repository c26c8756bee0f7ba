"""A distributed Airflow on this machine, as real processes, for end-to-end tests.

The topology of ``docker-compose.yaml``: the running PostgreSQL as metadata DB (a
database created for the cluster and dropped at teardown), Redis as Celery broker
(a Redis db number of its own), scheduler, dag-processor, two triggerers, one Celery
worker and the api-server, each a process of its own in its own session, started
from this repository's venv importing this repository's code (see :func:`python_path`).

The environment is the compose file's ``x-airflow-common`` environment; only what
differs between containers and one machine is overridden (:data:`OVERRIDDEN`):
addresses and ports, paths, per-run secrets, and the fault-detection timings
(shortened so a test does not wait minutes for a dead triggerer or worker to be
noticed).

DAG runs are driven and inspected through the REST API with a real HTTP client
(``requests``) authenticated like a user: ``POST /auth/token`` with a simple auth
manager user and password. The metadata DB is only read directly for facts the API
does not expose (which triggerer holds which trigger).

Usage::

    with AirflowCluster(repo_root, work_dir, dags_folder) as cluster:
        run_id = cluster.trigger("my_dag")
        assert cluster.wait_for_run("my_dag", run_id) == "success"
        cluster.xcom("my_dag", run_id, "train")
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil
import psycopg2
import redis
import requests
import yaml
from cryptography.fernet import Fernet

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_ADMIN_DB = os.environ.get("SPOT_E2E_PG_ADMIN_DB", "test")
REDIS_URL = "redis://127.0.0.1:6379"
ADMIN_USER, ADMIN_PASSWORD = "admin", "e2e-" + secrets.token_hex(8)

#: compose settings this harness replaces, and why (everything else is used as it is)
OVERRIDDEN = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "address: a database created for this cluster",
    "AIRFLOW__CELERY__RESULT_BACKEND": "address: the same database",
    "AIRFLOW__CELERY__BROKER_URL": "address: a Redis db number of its own",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "address: the api-server's loopback port",
    "AIRFLOW__API__BASE_URL": "address: the api-server's loopback port",
    "AIRFLOW__API__WORKERS": "one uvicorn worker is enough on a 2-core machine",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "path: under the temporary AIRFLOW_HOME",
    "AIRFLOW__API_AUTH__JWT_SECRET": "secret: random per run",
    "AIRFLOW__API__SECRET_KEY": "secret: random per run",
    "AIRFLOW__CORE__FERNET_KEY": "secret: a new Fernet key per run (the compose file requires one)",
    "AIRFLOW__CORE__DAGS_FOLDER": "path: the tests' DAGs",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "timing: pick up the tests' DAGs quickly",
    "AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI": "path: under the test's work directory",
    "AIRFLOW__SPOT_TRAINING__LOCAL_STATE_DIR": "path: under the test's work directory",
    "AIRFLOW__SPOT_TRAINING__POLL_INTERVAL": "timing: poll every second",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "timing: notice a dead triggerer in seconds",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "timing: notice a dead triggerer in seconds",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "timing: notice a dead worker in seconds",
    "AWS_ENDPOINT_URL": "address: no moto service here (the local backend needs no AWS)",
    "AIRFLOW_CONN_AWS_DEFAULT": "address: no moto service here",
}

TRIGGERERS = ("triggerer-1", "triggerer-2")
COMPONENTS = ("api-server", "scheduler", "dag-processor", *TRIGGERERS, "celery-worker")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed_from(repo_root: Path) -> bool:
    """Whether the installed ``airflow-spot-training`` is an editable install of ``repo_root``."""
    for dist in metadata.distributions(name="airflow-spot-training"):
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        url = info.get("url", "")
        if info.get("dir_info", {}).get("editable") and url.startswith("file://") \
                and Path(url[len("file://"):]).resolve() == Path(repo_root).resolve():
            return True
    return False


def python_path(repo_root: Path, inherited: str | None) -> str:
    """``PYTHONPATH`` for Airflow processes that must import ``repo_root``'s package.

    A worktree goes first, so its code wins over the shared editable install. An editable
    install of this very tree imports it already, and putting the tree on ``sys.path`` too
    would make the egg-info setuptools leaves there a second distribution: Airflow's plugin
    loader, which does not deduplicate entry points, would register the UI plugin twice.
    """
    root = Path(repo_root).resolve()
    entries = [p for p in (inherited or "").split(os.pathsep) if p]
    if installed_from(root):
        return os.pathsep.join(p for p in entries if Path(p).resolve() != root)
    return os.pathsep.join([str(root), *entries])


def compose_environment(compose_file: Path) -> dict[str, str]:
    """The ``x-airflow-common`` environment of the compose file, interpolated with defaults."""
    data = yaml.safe_load(compose_file.read_text())
    env = data["x-airflow-common"]["environment"]

    def interpolate(value: Any) -> str:
        text = str(value)
        # ${VAR:-default} and ${VAR:?required} (a required value the suite overrides)
        text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}",
                      lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)
        return text.replace("$$", "$")

    return {k: interpolate(v) for k, v in env.items()}


class AirflowCluster:
    """Start, drive and stop a distributed Airflow made of real local processes.

    :param repo_root: the repository (its ``docker-compose.yaml`` gives the environment;
        it is what every process imports, see :func:`python_path`).
    :param work_dir: an empty directory for AIRFLOW_HOME, logs, checkpoints and attempts.
    :param dags_folder: the DAGs the cluster runs.
    :param extra_env: more environment variables for every process (test hooks).
    :param overrides: replace compose settings (``AIRFLOW__...``) for this cluster.
    """

    def __init__(self, repo_root: Path, work_dir: Path, dags_folder: Path, *,
                 extra_env: dict[str, str] | None = None, overrides: dict[str, str] | None = None,
                 worker_concurrency: int = 8) -> None:
        self.repo_root = Path(repo_root)
        self.work_dir = Path(work_dir)
        self.dags_folder = Path(dags_folder)
        self.home = self.work_dir / "airflow-home"
        self.logs = self.work_dir / "logs"
        self.checkpoint_base = self.work_dir / "spot-training" / "checkpoints"
        self.state_dir = self.work_dir / "spot-training" / "local"
        self.db_name = f"spot_e2e_{uuid.uuid4().hex[:10]}"
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.redis_db = self._pick_redis_db()
        self.bin = Path(sys.executable).parent
        self.procs: dict[str, subprocess.Popen] = {}
        self._log_files: dict[str, Any] = {}
        self.triggerer_job_ids: dict[str, int] = {}
        self.worker_concurrency = worker_concurrency
        self.env = self._environment(extra_env or {}, overrides or {})
        self.session = requests.Session()

    # =====================================================================================
    # configuration
    # =====================================================================================
    def _pick_redis_db(self) -> int:
        for db in range(15, 0, -1):
            client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
            # claim a db nobody uses: empty, and our claim key set atomically
            if client.dbsize() == 0 and client.set("spot-e2e-claim", os.getpid(), nx=True, ex=3600):
                return db
        raise RuntimeError("no empty Redis db number (1-15) is free for the test cluster")

    def _environment(self, extra_env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
        compose = compose_environment(self.repo_root / "docker-compose.yaml")
        dsn = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.db_name}"
        mine = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": dsn,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + dsn.replace("+psycopg2", ""),
            "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{self.redis_db}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI": str(self.checkpoint_base),
            "AIRFLOW__SPOT_TRAINING__LOCAL_STATE_DIR": str(self.state_dir),
            "AIRFLOW__SPOT_TRAINING__POLL_INTERVAL": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "12",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "25",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": {
                "region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}}),
        }
        assert set(mine) == set(OVERRIDDEN), "document every override in OVERRIDDEN"
        missing = set(mine) - set(compose)
        assert not missing, f"overrides of settings the compose file does not have: {missing}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(compose)
        env.update(mine)
        env.update(overrides)
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONPATH": python_path(self.repo_root, env.get("PYTHONPATH")),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "*",
            **extra_env,
        })
        return env

    # =====================================================================================
    # lifecycle
    # =====================================================================================
    def __enter__(self) -> AirflowCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 240) -> None:
        for d in (self.home, self.logs, self.checkpoint_base, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))
        self._sql_admin(f'CREATE DATABASE "{self.db_name}"')
        self._run_cli("db-migrate", ["db", "migrate"], timeout=timeout)
        deadline = time.time() + timeout
        self.start_component("api-server")
        self._wait(lambda: self._api_up(), deadline, "the api-server to answer")
        self.login()
        for name in ("scheduler", "dag-processor", "celery-worker"):
            self.start_component(name)
        for name in TRIGGERERS:
            self.start_component(name)
        self._wait(lambda: self.celery_worker_ready(), deadline, "the Celery worker to be ready")

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill_component(name, signal.SIGTERM, wait=False)
        end = time.time() + 20
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
            self.kill_component(name, signal.SIGKILL)
        self.procs.clear()
        self.kill_trainings()
        for f in self._log_files.values():
            f.close()
        self._log_files.clear()
        try:
            client = redis.Redis.from_url(f"{REDIS_URL}/{self.redis_db}")
            client.flushdb()
        except redis.RedisError:
            pass
        try:
            self._sql_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except psycopg2.Error:
            pass

    def component_command(self, name: str) -> list[str]:
        airflow = str(self.bin / "airflow")
        return {
            "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port),
                           "--workers", "1"],
            "scheduler": [airflow, "scheduler"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer-1": [airflow, "triggerer", "--skip-serve-logs"],
            "triggerer-2": [airflow, "triggerer", "--skip-serve-logs"],
            "celery-worker": [airflow, "celery", "worker", "--concurrency", str(self.worker_concurrency),
                              "--skip-serve-logs", "--without-mingle", "--without-gossip"],
        }[name]

    def start_component(self, name: str) -> subprocess.Popen:
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running (pid {old.pid})")
        log = self._log_files.get(name) or open(self.logs / f"{name}.log", "ab")
        self._log_files[name] = log
        log.write(f"\n===== starting {name} at {time.time():.3f}\n".encode())
        log.flush()
        known = set(self._triggerer_jobs()) if name in TRIGGERERS else set()
        proc = subprocess.Popen(self.component_command(name), env=self.env, cwd=str(self.work_dir),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        if name in TRIGGERERS:  # learn which triggerer job this process is (one start at a time)
            self.triggerer_job_ids[name] = self.wait_until(
                lambda: next(iter(set(self._triggerer_jobs()) - known), None) or self.check_alive(), 120,
                f"{name} to register its job")
        return proc

    def component_processes(self, name: str) -> list[psutil.Process]:
        """The component's process and all its descendants, except training attempts it launched.

        A Celery task launches a local-backend supervisor in a session of its own: it is the
        stand-in for a cloud machine and outlives whatever launched it, so it is left out.
        """
        proc = self.procs.get(name)
        if proc is None:
            return []
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return []
        out, todo = [], [root]
        while todo:
            p = todo.pop()
            try:
                if p is not root and p.pid == os.getsid(p.pid) and _is_training(p):
                    continue
                out.append(p)
                todo.extend(p.children())
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
        return out

    def kill_component(self, name: str, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Send ``sig`` to a component's whole process tree (a crash, with SIGKILL)."""
        procs = self.component_processes(name)
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if wait:
            psutil.wait_procs(procs, timeout=30)
            proc = self.procs.pop(name, None)  # killed on purpose: no longer expected to run
            if proc is not None:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def restart_component(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.kill_component(name, sig)
        self.start_component(name)

    def training_processes(self) -> list[psutil.Process]:
        """Every local-backend supervisor (and its training) of this cluster's attempts."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if any(str(self.state_dir) in part for part in cmd) and _is_training(p):
                out.append(p)
                try:
                    out.extend(p.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        return out

    def kill_trainings(self) -> None:
        procs = self.training_processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)

    # =====================================================================================
    # helpers: processes and the metadata DB
    # =====================================================================================
    def _run_cli(self, name: str, args: list[str], timeout: float) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            subprocess.run([str(self.bin / "airflow"), *args], env=self.env, cwd=str(self.work_dir),
                           stdout=log, stderr=subprocess.STDOUT, check=True, timeout=timeout)

    def _sql_admin(self, statement: str) -> None:
        conn = psycopg2.connect(dbname=PG_ADMIN_DB, **PG)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def sql(self, query: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Read the cluster's metadata DB (only for facts the REST API does not expose)."""
        with closing(psycopg2.connect(dbname=self.db_name, **PG)) as conn:
            with conn.cursor() as cur:
                cur.execute(query, tuple(params))
                return cur.fetchall()

    def _triggerer_jobs(self) -> list[int]:
        rows = self.sql("SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
        return [r[0] for r in rows]

    def triggers_by_triggerer(self) -> dict[str | None, int]:
        """How many triggers each triggerer (by component name) holds right now."""
        names = {v: k for k, v in self.triggerer_job_ids.items()}
        rows = self.sql("SELECT triggerer_id, count(*) FROM trigger GROUP BY triggerer_id")
        return {names.get(r[0], None if r[0] is None else f"job-{r[0]}"): r[1] for r in rows}

    def celery_worker_ready(self) -> bool:
        self.check_alive()
        log = self.logs / "celery-worker.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text.rfind(" ready.") > text.rfind("===== starting")

    @staticmethod
    def _wait(predicate: Callable[[], Any], deadline: float, what: str, every: float = 0.5) -> Any:
        while True:
            value = predicate()
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(every)

    def run_key(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        """The run key the deployment's workers derive (salted with its ``deployment_id``)."""
        from airflow_spot_training.core.contract import run_key

        return run_key(dag_id, run_id, task_id, map_index, self.env.get("AIRFLOW__SPOT_TRAINING__DEPLOYMENT_ID", ""))

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
        return self._wait(predicate, time.time() + timeout, what, every)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow components exited: {dead}; logs under {self.logs}")

    # =====================================================================================
    # the REST API
    # =====================================================================================
    def _api_up(self) -> bool:
        self.check_alive()
        try:
            return requests.get(f"{self.base_url}/api/v2/version", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def login(self) -> None:
        r = requests.post(f"{self.base_url}/auth/token",
                          json={"username": ADMIN_USER, "password": ADMIN_PASSWORD}, timeout=30)
        r.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=60, **kwargs)
        if r.status_code >= 400:
            raise requests.HTTPError(f"{method} {path} -> {r.status_code}: {r.text}", response=r)
        return r.json() if r.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict:
        def parsed() -> dict | None:
            try:
                return self.api("GET", f"/dags/{dag_id}")
            except requests.HTTPError as e:
                if e.response is not None and e.response.status_code == 404:
                    return None
                raise
        dag = self.wait_until(parsed, timeout, f"DAG {dag_id} to be parsed", every=1)
        if dag.get("is_paused"):
            self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return dag

    def trigger(self, dag_id: str, run_id: str | None = None, conf: dict | None = None) -> str:
        run_id = run_id or f"e2e__{uuid.uuid4().hex[:12]}"
        self.api("POST", f"/dags/{dag_id}/dagRuns",
                 json={"dag_run_id": run_id, "logical_date": None, "conf": conf or {}})
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300,
                     states: tuple[str, ...] = ("success", "failed")) -> str:
        def final() -> str | None:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            return state if state in states else None
        return self.wait_until(final, timeout, f"run {dag_id}/{run_id} to reach {states}", every=1)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                        params={"limit": 1000})["task_instances"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}")

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}/tries"
                        )["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value",
             map_index: int = -1) -> Any:
        value = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                         params={"map_index": map_index})["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def mark_task_instance(self, dag_id: str, run_id: str, task_id: str, state: str = "failed",
                           map_index: int = -1) -> Any:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return self.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}",
                        json={"new_state": state})


def _is_training(p: psutil.Process) -> bool:
    try:
        return "airflow_spot_training.backends.local_supervisor" in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
