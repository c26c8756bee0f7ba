"""The ``[spot_training]`` configuration section, read through Airflow's config.

Every option has a documented default (see ``get_provider_info``); environment
variables work the Airflow way: ``AIRFLOW__SPOT_TRAINING__CHECKPOINT_BASE_URI``.
"""

from __future__ import annotations

import os

SECTION = "spot_training"


def _airflow_home() -> str:
    return os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def _get(key: str, fallback: str) -> str:
    from airflow.configuration import conf

    value = conf.get(SECTION, key, fallback=fallback)
    return value if value not in (None, "") else fallback


def checkpoint_base_uri() -> str:
    """Base under which default checkpoint prefixes are created."""
    return _get("checkpoint_base_uri", os.path.join(_airflow_home(), "spot_training", "checkpoints"))


def local_state_dir() -> str:
    """Where the local backend keeps its attempt directories."""
    return _get("local_state_dir", os.path.join(_airflow_home(), "spot_training", "local"))


def poll_interval() -> float:
    return float(_get("poll_interval", "30"))


def progress_log_interval() -> float:
    return float(_get("progress_log_interval", "60"))
