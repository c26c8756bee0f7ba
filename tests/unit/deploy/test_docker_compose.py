"""docker-compose.yaml: validated statically (no Docker engine needed) and kept in step with
the environment the distributed test suite runs with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.airflow_cluster import OVERRIDDEN, compose_environment

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yaml"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer-1": "triggerer",
    "airflow-triggerer-2": "triggerer",
}
SHARED_DIRS = ("AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI", "AIRFLOW__SPOT_TRAINING__LOCAL_STATE_DIR")


def _check(config: dict) -> None:
    services = config["services"]
    assert set(services) == {*AIRFLOW_SERVICES, "airflow-init", "postgres", "redis", "moto"}
    for name, command in AIRFLOW_SERVICES.items():
        svc = services[name]
        assert svc["command"] in (command, command.split()), name
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("@")[1].startswith("postgres:")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
        assert env["AWS_ENDPOINT_URL"] == "http://moto:5000"
        mounts = dict(_mount(v) for v in svc["volumes"])  # target -> source
        assert Path(mounts["/opt/airflow/dags"]).name == "dags", mounts
        assert mounts["/opt/airflow/spot-training"] == "spot-training"  # one shared volume
        for var in SHARED_DIRS:  # every process sees the same checkpoints and attempts
            assert env[var].startswith("/opt/airflow/spot-training/"), (name, var)
        assert "build" in svc  # the provider comes from this repository, not from PyPI
    for name in ("airflow-triggerer-1", "airflow-triggerer-2"):
        assert services[name]["pid"] == "service:airflow-worker"
    assert "spot-training" in config["volumes"]


def _mount(volume: str | dict) -> tuple[str, str]:
    if isinstance(volume, dict):
        return volume["target"], volume.get("source", "")
    parts = volume.split(":")
    if parts[-1] in ("rw", "ro"):
        parts = parts[:-1]
    return parts[1], parts[0]


def test_compose_file_structure():
    _check(yaml.safe_load(COMPOSE.read_text()))  # PyYAML resolves the << merge keys


def test_docker_compose_config_accepts_the_file(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (scripts/setup.sh installs Debian's package when run as "
                    "root); the structure test above still checks the file")
    env = {**os.environ, "AIRFLOW_FERNET_KEY": "a" * 43 + "="}
    quiet = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                           cwd=ROOT, env=env)
    assert quiet.returncode == 0, quiet.stderr
    out = subprocess.run([exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT,
                         check=True, env=env)
    _check(yaml.safe_load(out.stdout))


def test_the_deployment_refuses_to_start_without_a_fernet_key():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (scripts/setup.sh installs Debian's package when run as root)")
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_FERNET_KEY"}
    refused = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                             cwd=ROOT, env=env)
    assert refused.returncode != 0
    assert "set AIRFLOW_FERNET_KEY" in refused.stderr


def test_the_e2e_suite_runs_with_the_compose_environment():
    compose = compose_environment(COMPOSE)
    assert set(OVERRIDDEN) <= set(compose)
    assert not {k for k in OVERRIDDEN if not k.startswith(("AIRFLOW", "AWS_"))}
    # what the suite does not override, it takes as it is: the executor, auth, the provider's settings
    kept = set(compose) - set(OVERRIDDEN)
    assert {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__TRIGGERER__CAPACITY",
            "AIRFLOW__TRIGGERER__MAX_TRIGGER_TO_SELECT_PER_LOOP"} <= kept
