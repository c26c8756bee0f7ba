"""A worker dies between launch and defer; the Airflow retry re-attaches to the same instance.

The first try runs in a separate worker process against the moto server of the test
process. In ``kill-me`` mode the test kills that worker with SIGKILL from inside
moto's RunInstances handler, right after moto created the instance and before the
response reached the worker: the ledger is left with attempt 1 "launching" and no
handle. In ``exit-at-defer`` mode the worker exits hard as it defers. The second try
runs the real operator in this process; it must find the instance by its token tag,
re-attach, and finish, with exactly one instance ever launched for the attempt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_spot_training.operators.ec2 import EC2SpotTrainingOperator
from airflow_spot_training.operators.spot_training import LEDGER_KEY
from tests import aws_cloud
from tests.spot_harness import JsonFileStateStore, run_try

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("mode", ["kill-me", "exit-at-defer"])
def test_retry_after_worker_crash_reattaches_to_the_one_instance(aws, tmp_path, monkeypatch, mode):
    from moto.ec2.models.instances import InstanceBackend

    network = aws_cloud.make_network()
    args: dict[str, Any] = dict(
        task_id="train", command="python3 -m my_training", image_id=network["image_id"],
        instance_types=["c5.xlarge"], subnet_ids=network["subnets"][:1], on_demand_prices={"c5.xlarge": 0.17},
        checkpoint_prefix=f"s3://{aws_cloud.BUCKET}/runs/crash-{mode}", max_preemptions=2,
        poll_interval=0.05, retries=1,
    )
    worker: dict[str, subprocess.Popen[bytes]] = {}
    original_run = InstanceBackend.run_instances

    def run_instances_then_kill_worker(self: Any, *a: Any, **kw: Any) -> Any:
        reservation = original_run(self, *a, **kw)
        if mode == "kill-me" and "proc" in worker:
            os.kill(worker["proc"].pid, signal.SIGKILL)  # the worker dies waiting for this answer
        return reservation

    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances_then_kill_worker)
    state_file = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tests.crashing_worker", str(state_file), json.dumps(args), mode],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker["proc"] = proc
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGKILL, 137), stderr.decode()[-2000:]

    store = JsonFileStateStore(state_file)
    crashed = store.get(LEDGER_KEY)["attempts"]
    assert len(crashed) == 1
    if mode == "kill-me":
        assert crashed[0]["outcome"] == "launching" and crashed[0]["handle"] is None
    else:
        assert crashed[0]["outcome"] == "running" and crashed[0]["handle"]["instance_id"]
    assert len(aws_cloud.all_instances()) == 1
    first_instance = aws_cloud.all_instances()[0].id

    machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "finish"})
    summary, _ = run_try(EC2SpotTrainingOperator(**args), store, 2, machine)

    assert summary["outcome"] == "succeeded"
    assert [a["number"] for a in summary["attempts"]] == [1]
    assert summary["attempts"][0]["try_number"] == 1 and summary["tries"] == [1, 2]
    assert [h.instance_id for h in machine.handles] == [first_instance]
    instances = aws_cloud.all_instances()
    assert [i.id for i in instances] == [first_instance]  # exactly one instance ever ran
    assert instances[0].state == "terminated"
