"""Build the LaunchRequest the operator would build, for backend-level tests."""

from __future__ import annotations

from airflow_spot_training.backends.base import LaunchRequest
from airflow_spot_training.core.contract import Contract, attempt_token, run_key
from airflow_spot_training.core.policy import Capacity


def launch_request(prefix: str, attempt: int = 1, capacity: Capacity = Capacity.SPOT,
                   task_id: str = "train") -> LaunchRequest:
    key = run_key("gcp_dag", "manual__2026-01-01T00:00:00+00:00", task_id)
    contract = Contract(
        checkpoint_uri=prefix,
        attempt=attempt,
        capacity=capacity.value,
        preemptions=0,
        run_key=key,
        result_uri=f"{prefix.rstrip('/')}/_results/attempt-{attempt}.json",
        token=attempt_token(key, attempt),
    )
    return LaunchRequest(
        contract=contract, capacity=capacity, token=attempt_token(key, attempt),
        labels={"dag_id": "gcp_dag", "run_id": "manual__2026-01-01T00:00:00+00:00", "task_id": task_id,
                "map_index": "-1", "attempt": str(attempt), "run_key": key},
    )
