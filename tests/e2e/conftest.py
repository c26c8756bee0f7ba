"""One distributed Airflow per test session, shared by every end-to-end test.

Needs the PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and the Redis
(127.0.0.1:6379) the project's CI provides; the tests are skipped, saying why, when
either is not reachable.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.airflow_cluster import AirflowCluster

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
