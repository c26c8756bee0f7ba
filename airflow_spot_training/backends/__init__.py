"""Backends: one module each. Names usable as ``backend="..."`` map to their classes here."""

BACKENDS = {
    "local": "airflow_spot_training.backends.local.LocalBackend",
}
