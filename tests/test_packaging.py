"""The built wheel installs like a provider: Airflow registers it, and mypy sees its types.

The wheel is built from the tree and installed with ``--no-deps`` into a fresh venv (no system
site-packages) that reaches the shared environment's site-packages through a ``.pth`` line, so
that its dependencies need not be downloaded again. Only the wheel's copy of the package is
importable there: the shared environment's own development install is not (its ``.pth`` files
are not processed), which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

DAG_FILE = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG

    from airflow_spot_training.backends.local import LocalBackend
    from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
    from airflow_spot_training.operators.spot_training import SpotTrainingOperator

    with DAG("typed", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        train = SpotTrainingOperator(task_id="train", backend=LocalBackend(command=["true"]), max_attempts="3")
        EC2SpotTrainingOperator(task_id="ec2", command="true", image_id="ami-0123456789abcdef0")
        reveal_type(train.backend)
        reveal_type(train.escalation_policy)
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("packaging")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # built from a copy: a build leaves an egg-info in its source tree, a second distribution for
    # every process that has the tree on its path
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                ".mypy_cache", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "dist"), str(source)], check=True, env=env, cwd=work, timeout=600)
    (wheel,) = (work / "dist").glob("airflow_spot_training-*.whl")
    target = work / "venv"
    venv.create(target, with_pip=False, system_site_packages=False)
    python = target / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "shared_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True,
                   env=env, cwd=work, timeout=600)
    env["AIRFLOW_HOME"] = str(work / "airflow-home")
    return {"python": python, "site": site, "env": env, "work": work, "wheel": wheel}


def _run(installed: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([installed["python"], *args], env=installed["env"], cwd=installed["work"],
                          capture_output=True, text=True, timeout=600, check=check)


def test_the_venv_imports_the_wheels_copy(installed):
    where = _run(installed, "-c", "import airflow_spot_training as m; print(m.__file__)").stdout.strip()
    assert where.startswith(str(installed["site"]))
    files = _run(installed, "-c", "import importlib.resources as r; p = r.files('airflow_spot_training'); "
                 "print(p.joinpath('py.typed').is_file(), p.joinpath('bootstrap/ec2_user_data.sh').is_file(), "
                 "p.joinpath('ui/static/overview.html').is_file())").stdout.split()
    assert files == ["True", "True", "True"]


def test_airflow_providers_get_lists_it_with_operators_triggers_links_plugin_and_config(installed):
    shown = _run(installed, "-m", "airflow", "providers", "get", "airflow-spot-training", "--full", "-o", "json")
    (provider,) = json.loads(shown.stdout)
    info = provider["provider_info"] if "provider_info" in provider else provider
    text = json.dumps(info)
    assert "airflow_spot_training.operators.spot_training" in text and "airflow_spot_training.operators.ec2" in text
    assert "airflow_spot_training.triggers.spot_training" in text
    assert "airflow_spot_training.links.spot_training.CheckpointLink" in text
    assert "airflow_spot_training.ui.plugin.SpotTrainingPlugin" in text
    assert "default_deferrable" in text
    plugins = _run(installed, "-m", "airflow", "plugins", "-o", "json")
    assert "spot_training" in plugins.stdout
    metadata = _run(installed, "-c", "from importlib.metadata import metadata; "
                    "print(metadata('airflow-spot-training').get_all('Classifier'))").stdout
    assert "Framework :: Apache Airflow :: Provider" in metadata


def test_mypy_sees_the_packages_types(installed):
    dag = installed["work"] / "typed_dag.py"
    dag.write_text(DAG_FILE)
    result = _run(installed, "-m", "mypy", "--no-incremental", "--follow-imports=silent", str(dag), check=False)
    out = result.stdout
    assert "missing library stubs or py.typed marker" not in out and "module is installed, but" not in out, out
    assert 'Argument "max_attempts" to "SpotTrainingOperator" has incompatible type "str"; expected "int"' in out, out
    assert 'Revealed type is "airflow_spot_training.backends.base.SpotBackend"' in out, out
    assert 'Revealed type is "airflow_spot_training.core.policy.EscalationPolicy"' in out, out
