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


def pool_cooldown() -> float:
    """Seconds a pool is tried last after it reclaimed an attempt or had no capacity (0: pool health off)."""
    return float(_get("pool_cooldown", "1800"))


def pool_health_window() -> float:
    """Seconds of pool observations that count (older ones are forgotten)."""
    return float(_get("pool_health_window", "21600"))


def default_deferrable() -> bool:
    """Whether spot-training tasks wait in the triggerer unless a task says otherwise."""
    return _get("default_deferrable", "true").strip().lower() in ("1", "true", "yes", "on")


#: the Airflow Variable that holds a generated deployment id when the configuration has none
DEPLOYMENT_VARIABLE = "spot_training_deployment_id"
_deployment_id: str | None = None


def deployment_id() -> str:
    """This Airflow deployment's identifier: salts run keys, tokens and tags, and names the
    ``spot-training:deployment`` tag the documented IAM policy is conditioned on.

    ``[spot_training] deployment_id`` when set (set it explicitly in production, and use the
    same value in the IAM policy). Otherwise one is generated on first use and kept in the
    Airflow Variable ``spot_training_deployment_id``, so every worker of the deployment
    derives the same one. Outside a task (no Variables reachable) it is empty.
    """
    global _deployment_id
    configured = _get("deployment_id", "").strip()
    if configured:
        return configured
    if _deployment_id is None:
        _deployment_id = _variable_deployment_id()
    return _deployment_id


def _variable_deployment_id() -> str:
    import logging
    import secrets

    try:
        from airflow.sdk import Variable

        value = Variable.get(DEPLOYMENT_VARIABLE, default=None)
        if not value:
            Variable.set(DEPLOYMENT_VARIABLE, secrets.token_hex(6))
            value = Variable.get(DEPLOYMENT_VARIABLE)  # the one that won if workers raced
        return str(value)
    except Exception as e:  # no task runner: tests driving the operator in-process, or no API
        logging.getLogger(__name__).warning(
            "no [spot_training] deployment_id and no Airflow Variable reachable (%s); run keys are not salted", e)
        return ""
