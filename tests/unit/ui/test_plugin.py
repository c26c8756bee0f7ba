"""The plugin is registered so that Airflow loads it exactly once, whatever
``[core] lazy_discover_providers`` says, and it declares what the api-server mounts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from airflow_spot_training.get_provider_info import get_provider_info
from tests.e2e.airflow_cluster import python_path

ROOT = Path(__file__).resolve().parents[3]
LOADED = (
    "import json\n"
    "from airflow import plugins_manager\n"
    "plugins, errors = plugins_manager._get_plugins()\n"
    "apps, _ = plugins_manager.get_fastapi_plugins()\n"
    "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors,\n"
    "                  'prefixes': [a['url_prefix'] for a in apps]}))\n"
)


def test_provider_info_names_the_plugin_class():
    [plugin] = get_provider_info()["plugins"]
    module, _, name = plugin["plugin-class"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    assert cls.name == plugin["name"] == "spot_training"


def test_the_entry_point_names_the_plugin():
    [ep] = [e for e in entry_points(group="airflow.plugins") if e.value.startswith("airflow_spot_training")]
    assert ep.value == "airflow_spot_training.ui.plugin:entry_point_plugin"


@pytest.mark.parametrize("lazy", ["True", "False"])
def test_airflow_loads_it_once(tmp_path, lazy):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy,
                "PYTHONPATH": python_path(ROOT, os.environ.get("PYTHONPATH"))})
    out = subprocess.run([sys.executable, "-c", LOADED], env=env, capture_output=True, text=True, check=True,
                         cwd=str(tmp_path))
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["names"].count("spot_training") == 1
    # other plugins' complaints are theirs (the OpenLineage provider's registers twice when not lazy)
    assert {source: error for source, error in loaded["errors"].items() if "spot" in source + error} == {}
    assert loaded["prefixes"].count("/spot-training") == 1


def test_views_point_at_the_app():
    from airflow_spot_training.ui.plugin import URL_PREFIX, SpotTrainingPlugin

    views = {v["destination"]: v for v in SpotTrainingPlugin.external_views}
    assert views["task_instance"]["href"].startswith(f"{URL_PREFIX}/task-instance?")
    for placeholder in ("{DAG_ID}", "{RUN_ID}", "{TASK_ID}", "{MAP_INDEX}"):
        assert placeholder in views["task_instance"]["href"]
    assert views["nav"]["href"] == f"{URL_PREFIX}/overview"
    assert len({v["url_route"] for v in views.values()}) == 2
