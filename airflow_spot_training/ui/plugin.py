"""``SpotTrainingPlugin``: the UI plugin the provider ships.

The api-server mounts the FastAPI app of :mod:`airflow_spot_training.ui.app` under
``/spot-training`` and Airflow's own UI shows two external views of it in an iframe:

* "Spot training", a tab of every task instance (``destination="task_instance"``);
* "Spot training", an entry of the navigation (``destination="nav"``): the overview.

Registered twice, loaded once, with no configuration: the provider info lists it under
``plugins`` (Airflow loads provider plugins when ``[core] lazy_discover_providers`` is
off), and the ``airflow.plugins`` entry point names :data:`entry_point_plugin`, which is
the plugin while providers are discovered lazily (Airflow's default, when provider
plugins are not loaded) and ``None`` otherwise, so the plugin never registers twice.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow import settings
from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/spot-training"


@cache
def _fastapi_app() -> dict[str, Any]:
    from airflow_spot_training.ui.app import create_app

    return {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Spot training"}


class _FastAPIApps:
    """``fastapi_apps``, built on first use: only the api-server needs the app.

    Airflow reads the attribute on the plugin class (provider plugins) or on an instance
    (entry-point plugins); a descriptor answers both.
    """

    def __get__(self, instance: Any, owner: type) -> list[dict[str, Any]]:
        return [_fastapi_app()]


class SpotTrainingPlugin(AirflowPlugin):
    """The spot-training task-instance view and overview page."""

    name = "spot_training"
    fastapi_apps = _FastAPIApps()  # type: ignore[assignment]
    external_views = [
        {
            "name": "Spot training",
            "href": f"{URL_PREFIX}/task-instance?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}"
            "&map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "spot-training-task-instance",
        },
        {
            "name": "Spot training",
            "href": f"{URL_PREFIX}/overview",
            "destination": "nav",
            "url_route": "spot-training",
            "icon": f"{URL_PREFIX}/static/icon.svg",
            "nav_top_level": True,
        },
    ]


#: what the ``airflow.plugins`` entry point loads (see the module docstring)
entry_point_plugin = SpotTrainingPlugin if settings.LAZY_LOAD_PROVIDERS else None
