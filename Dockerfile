# The image docker-compose.yaml runs: the official Airflow image plus this provider,
# installed from this repository (not from PyPI).
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION=3.3.2

COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow-spot-training/
COPY --chown=airflow:0 airflow_spot_training /opt/airflow-spot-training/airflow_spot_training
# aws: EC2/SageMaker backends (run against the moto service in development);
# the Celery and PostgreSQL providers are already in the official image.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/airflow-spot-training[aws]"
