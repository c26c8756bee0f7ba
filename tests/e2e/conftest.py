"""End-to-end fixtures.

* ``local_airflow``: real Airflow 3.3 through ``airflow dags test`` on SQLite, for the
  single-process loop (tests/e2e/test_local_dags.py, DAGs in tests/e2e/local_dags/).
* ``airflow_cluster``: one distributed Airflow per session (scheduler, dag-processor, two
  triggerers, Celery worker, api-server) against the PostgreSQL (127.0.0.1:5432, user
  postgres, trust auth) and Redis (127.0.0.1:6379) the project's CI provides; its tests
  are skipped, saying why, when either is not reachable. DAGs in tests/e2e/dags/.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.airflow_cluster import AirflowCluster

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@dataclass
class LocalAirflow:
    home: Path
    workdir: Path
    env: dict[str, str]

    def dags_test(self, dag_id: str, logical_date: str, timeout: float = 300, check: bool = True,
                  background: bool = False):
        cmd = [AIRFLOW, "dags", "test", dag_id, logical_date]
        log = open(self.workdir / f"{dag_id}.log", "a")
        if background:
            return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        result = subprocess.run(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"airflow dags test {dag_id} exited {result.returncode}; log: {log.name}\n"
                                 + (self.workdir / f"{dag_id}.log").read_text()[-4000:])
        return result

    def query(self, code: str):
        """Run ``code`` (which must set ``result``) against the metadata DB; return ``result`` as JSON."""
        program = (
            "import json\nfrom sqlalchemy import select\nfrom airflow.utils.session import create_session\n"
            + code + "\nprint(json.dumps(result, default=str))\n"
        )
        out = subprocess.run([sys.executable, "-c", program], env=self.env, capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def xcom(self, dag_id: str, key: str, task_id: str = "train"):
        value = self.query(
            "from airflow.models.xcom import XComModel\n"
            "with create_session() as s:\n"
            f"    row = s.execute(select(XComModel.value).where(XComModel.dag_id == {dag_id!r}, "
            f"XComModel.task_id == {task_id!r}, XComModel.key == {key!r}).order_by(XComModel.timestamp.desc())"
            ").first()\n"
            "result = row[0] if row else None\n"
        )
        return _decoded(value)

    def ti(self, dag_id: str, task_id: str = "train"):
        return self.query(
            "from airflow.models.taskinstance import TaskInstance as TI\n"
            "with create_session() as s:\n"
            f"    ti = s.execute(select(TI.state, TI.try_number).where(TI.dag_id == {dag_id!r}, "
            f"TI.task_id == {task_id!r})).first()\n"
            "result = {'state': str(ti[0]), 'try_number': ti[1]}\n"
        )

    def ledger(self, dag_id: str, task_id: str = "train"):
        value = self.query(
            "from airflow.models.task_state_store import TaskStateStoreModel as M\n"
            "with create_session() as s:\n"
            f"    row = s.execute(select(M.value).where(M.dag_id == {dag_id!r}, M.task_id == {task_id!r}, "
            "M.key == 'spot_training_ledger')).first()\n"
            "result = row[0] if row else None\n"
        )
        return _decoded(value)


def _decoded(value):
    """XCom and state-store values may come back JSON-encoded once more; undo that if so."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@pytest.fixture(scope="session")
def local_airflow(tmp_path_factory) -> LocalAirflow:
    home = tmp_path_factory.mktemp("airflow-home")
    workdir = tmp_path_factory.mktemp("e2e-work")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).parent / "local_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI": str(workdir / "checkpoints"),
        "AIRFLOW__SPOT_TRAINING__LOCAL_STATE_DIR": str(workdir / "state"),
        "E2E_WORKDIR": str(workdir),
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return LocalAirflow(home=home, workdir=workdir, env=env)


REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).resolve().parent / "dags"


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def e2e_work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("airflow-cluster")


@pytest.fixture(scope="session")
def airflow_cluster(e2e_work_dir: Path):
    """The compose topology as processes: scheduler, dag-processor, 2 triggerers, worker, api-server."""
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        if not _reachable(port):
            pytest.skip(f"{name} is not listening on 127.0.0.1:{port}; the distributed suite needs it")
    hold_dir = e2e_work_dir / "holds"
    hold_dir.mkdir()
    hooks = {"SPOT_E2E_HOLD_DIR": str(hold_dir)}  # see LaunchThenHangBackend in dags/
    with AirflowCluster(REPO_ROOT, e2e_work_dir, DAGS, extra_env=hooks) as cluster:
        cluster.hold_dir = hold_dir
        yield cluster
