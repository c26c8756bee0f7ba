"""The provider's Airflow UI plugin: a task-instance view and an overview page.

``plugin`` holds the ``AirflowPlugin`` (registered in the provider info), ``app`` the
FastAPI app it mounts, ``ledger_store`` every database read, ``ledger_view`` the pure
functions that turn a ledger into what the pages draw.
"""
