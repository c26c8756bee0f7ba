"""airflow-spot-training: train on spot capacity with Apache Airflow, and still finish on time."""

__version__ = "0.1.0"
