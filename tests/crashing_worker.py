"""A worker process that runs one try of an EC2 task and dies on the way.

``python -m tests.crashing_worker STATE_FILE ARGS_JSON MODE``

* ``MODE=kill-me``: runs ``execute``; the test kills this process (SIGKILL) while
  its RunInstances request is in flight, after EC2 (moto) created the instance.
* ``MODE=exit-at-defer``: runs ``execute`` and exits hard when the operator defers,
  before the deferral could reach the scheduler.
"""

from __future__ import annotations

import json
import os
import sys

from airflow.sdk.exceptions import TaskDeferred

from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from tests.spot_harness import JsonFileStateStore, TryInstance


def main() -> None:
    state_file, args_json, mode = sys.argv[1:4]
    operator = EC2SpotTrainingOperator(**json.loads(args_json))
    context = {"ti": TryInstance(1), "task_state_store": JsonFileStateStore(state_file)}
    try:
        operator.execute(context)
    except TaskDeferred:
        if mode == "exit-at-defer":
            os._exit(137)
        raise
    os._exit(3)  # kill-me: never reached when the test kills the worker in time


if __name__ == "__main__":
    main()
