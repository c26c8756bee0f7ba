"""``airflow dags test`` runs an EC2 spot-training DAG end to end against moto on loopback.

Real Airflow (SQLite, a temporary AIRFLOW_HOME) runs the task and its trigger
inline; the task reaches a ThreadedMotoServer in this test process through the
``aws_default`` connection. A thread of this test plays the machines: when an
instance of the DAG appears in moto's EC2 state, it commits checkpoints to moto's S3
and then reclaims it (``Server.SpotInstanceTermination``, attempts 1 and 2) or
writes the result record and shuts it down (``Client.InstanceInitiatedShutdown``).
Expected: preempted twice, escalated to on-demand, success, each attempt resuming
from the previous one's checkpoint, three instances in the account, all terminated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_spot_training.backends.ec2 import EC2Handle
from tests import aws_cloud

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "spot_training_ec2_e2e"

pytestmark = pytest.mark.e2e


def play_machines(storage: dict[str, Any], stop: threading.Event, machine: aws_cloud.EC2Machine) -> None:
    seen: set[str] = set()
    while not stop.wait(0.05):
        for instance in aws_cloud.all_instances():
            tags = aws_cloud.instance_tags(instance)
            if instance.id in seen or tags.get("spot-training:dag-id") != DAG_ID or instance.state != "running":
                continue
            seen.add(instance.id)
            attempt = int(tags["spot-training:attempt"])
            prefix = f"s3://{aws_cloud.BUCKET}/e2e/{tags['spot-training:run-id']}"
            machine(EC2Handle(backend="ec2", token=tags["spot-training:token"], attempt=attempt,
                              capacity=tags["spot-training:capacity"], instance_id=instance.id,
                              result_uri=f"{prefix}/_results/attempt-{attempt}.json"))


def read_summary(env: dict[str, str]) -> Any:
    code = f"""
import json
from sqlalchemy import select
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
with create_session() as s:
    row = s.execute(select(XComModel.value).where(XComModel.dag_id == {DAG_ID!r},
        XComModel.task_id == "train", XComModel.key == "return_value").limit(1)).first()
print(json.dumps(row[0] if row else None))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    value = json.loads(out.stdout.strip().splitlines()[-1])
    return json.loads(value) if isinstance(value, str) else value


def test_dags_test_preempted_twice_escalated_then_succeeds(aws, tmp_path):
    network = aws_cloud.make_network()
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "tests" / "e2e" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "E2E_IMAGE_ID": network["image_id"],
        "E2E_SUBNETS": ",".join(network["subnets"][:2]),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)

    machine = aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "reclaim", 3: "finish"})
    stop = threading.Event()
    player = threading.Thread(target=play_machines, args=(aws["storage_options"], stop, machine), daemon=True)
    player.start()
    try:
        run = subprocess.run([airflow, "dags", "test", DAG_ID], env=env, capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    finally:
        stop.set()
        player.join(10)
    log = run.stdout + run.stderr
    (tmp_path / "dags-test.log").write_text(log)
    assert run.returncode == 0, log[-4000:]

    summary = read_summary(env)
    assert summary is not None, log[-4000:]
    assert summary["outcome"] == "succeeded"
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [
        ("spot", "preempted"), ("spot", "preempted"), ("on_demand", "succeeded")]
    assert summary["preemptions"] == 2 and [e["to"] for e in summary["escalations"]] == ["on_demand"]
    assert machine.resumed_from == {1: 0, 2: 40, 3: 80}
    instances = [i for i in aws_cloud.all_instances()
                 if aws_cloud.instance_tags(i).get("spot-training:dag-id") == DAG_ID]
    assert len(instances) == 3 and all(i.state == "terminated" for i in instances)
