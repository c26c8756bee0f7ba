"""The package registers as an Airflow provider through its entry point."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points


def test_entry_point_gives_provider_info():
    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_spot_training")]
    info = ep.load()()
    assert info["package-name"] == "airflow-spot-training"
    options = info["config"]["spot_training"]["options"]
    assert {"checkpoint_base_uri", "local_state_dir", "poll_interval", "progress_log_interval"} <= set(options)
    for name, option in options.items():
        assert option["description"] and "default" in option, name
    for link in info["extra-links"]:
        module, _, cls = link.rpartition(".")
        assert getattr(importlib.import_module(module), cls).name


def test_airflow_sees_the_provider():
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-spot-training" in pm.providers
    links = pm.extra_links_class_names
    assert "airflow_spot_training.links.spot_training.CheckpointLink" in links
