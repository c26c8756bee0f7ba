"""Pool health is shared by the tasks of one deployment through the metadata database.

``airflow dags test`` (real Airflow, SQLite, a temporary AIRFLOW_HOME) runs two EC2 trainings
one after the other against moto on loopback. The first task's attempt 1 is reclaimed in the
first subnet's pool; the second task, which never saw that reclaim itself, launches its
first attempt in the other pool, because the first task wrote the reclaim to an Airflow
Variable that the second read. A thread of this test plays the machines (see
``tests/aws_cloud.py``).
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
DAG_ID = "spot_training_pool_health_e2e"

pytestmark = pytest.mark.e2e


def play_machines(stop: threading.Event, machines: dict[str, aws_cloud.EC2Machine]) -> None:
    seen: set[str] = set()
    while not stop.wait(0.05):
        for instance in aws_cloud.all_instances():
            tags = aws_cloud.instance_tags(instance)
            if instance.id in seen or tags.get("spot-training:dag-id") != DAG_ID or instance.state != "running":
                continue
            seen.add(instance.id)
            attempt, task_id = int(tags["spot-training:attempt"]), tags["spot-training:task-id"]
            prefix = f"s3://{aws_cloud.BUCKET}/e2e-pool-health/{tags['spot-training:run-id']}/{task_id}"
            machines[task_id](EC2Handle(backend="ec2", token=tags["spot-training:token"], attempt=attempt,
                                        capacity=tags["spot-training:capacity"], instance_id=instance.id,
                                        result_uri=f"{prefix}/_results/attempt-{attempt}.json"))


def query(env: dict[str, str], code: str) -> Any:
    program = ("import json\nfrom sqlalchemy import select\nfrom airflow.utils.session import create_session\n"
               + code + "\nprint(json.dumps(result, default=str))\n")
    out = subprocess.run([sys.executable, "-c", program], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summaries(env: dict[str, str]) -> dict[str, Any]:
    rows = query(env, f"""
from airflow.models.xcom import XComModel
with create_session() as s:
    result = [list(r) for r in s.execute(select(XComModel.task_id, XComModel.value).where(
        XComModel.dag_id == {DAG_ID!r}, XComModel.key == "return_value"))]
""")
    return {task_id: json.loads(value) if isinstance(value, str) else value for task_id, value in rows}


def pool_variables(env: dict[str, str]) -> dict[str, Any]:
    rows = query(env, """
from airflow.models.variable import Variable
with create_session() as s:
    result = [[v.key, v.val] for v in s.scalars(select(Variable).where(Variable.key.like("spot_training_pool_health:%")))]
""")
    return {key: json.loads(value) for key, value in rows}


def test_a_pool_one_task_saw_reclaimed_is_skipped_by_the_next_task(aws, tmp_path):
    network = aws_cloud.make_network()
    subnets = network["subnets"][:2]
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "tests" / "e2e" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "E2E_IMAGE_ID": network["image_id"],
        "E2E_SUBNETS": ",".join(subnets),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)

    machines = {"train_first": aws_cloud.EC2Machine(aws["storage_options"], {1: "reclaim", 2: "finish"}),
                "train_second": aws_cloud.EC2Machine(aws["storage_options"], {1: "finish"})}
    stop = threading.Event()
    player = threading.Thread(target=play_machines, args=(stop, machines), daemon=True)
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

    done = summaries(env)
    first, second = done["train_first"], done["train_second"]
    assert [(a["outcome"], a["pool"]) for a in first["attempts"]] == [
        ("preempted", f"c5.xlarge@{subnets[0]}"), ("succeeded", f"c5.xlarge@{subnets[1]}")]
    # the second task's very first launch avoided the pool the first task saw reclaimed
    assert [(a["outcome"], a["pool"]) for a in second["attempts"]] == [("succeeded", f"c5.xlarge@{subnets[1]}")]
    assert f"c5.xlarge@{subnets[0]}: reclaimed an attempt" in second["attempts"][0]["pool_reason"]
    # what they shared: the reclaim, in the metadata database
    stored = pool_variables(env)
    reclaimed = [o for value in stored.values() for o in value["observations"] if o["event"] == "reclaimed"]
    assert [o["pool"] for o in reclaimed] == [f"c5.xlarge@{subnets[0]}"]
    instances = [i for i in aws_cloud.all_instances() if aws_cloud.instance_tags(i).get("spot-training:dag-id") == DAG_ID]
    assert len(instances) == 3 and all(i.state == "terminated" for i in instances)
