"""`airflow dags test` on a Compute Engine spot-training DAG, against the fake cloud on loopback.

Real Airflow (SQLite, a temporary AIRFLOW_HOME) runs the real operator, defers, runs the
trigger inline, and resumes; the VMs' training is played by the fake cloud's insert hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_spot_training.runtime.checkpoint import CheckpointManager
from tests.fakes.gce_server import GCEServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")

DAG_FILE = textwrap.dedent('''
    import os
    import pendulum
    from airflow.sdk import DAG
    from airflow_spot_training.operators.compute_engine import ComputeEngineSpotTrainingOperator

    with DAG(dag_id="gce_fake", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        ComputeEngineSpotTrainingOperator(
            task_id="train", project_id="test-project", zones=["us-central1-a", "us-central1-b"],
            machine_type="n1-standard-4", command="python3 /opt/train.py",
            checkpoint_prefix=os.environ["TEST_CHECKPOINT_PREFIX"], max_preemptions=1, poll_interval=0.2,
            emulator_host=os.environ["TEST_GCE_EMULATOR"],
            service_account="trainer@test-project.iam.gserviceaccount.com",
        )
''')


def play_vm(zone: str, instance: dict, server: GCEServer) -> None:
    """Spot VMs train to step 100 and are reclaimed; a standard VM resumes and finishes."""
    metadata = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
    env = json.loads(metadata["spot-training-env"])
    manager = CheckpointManager(env["SPOT_TRAINING_CHECKPOINT_URI"], keep_last=None)
    latest = manager.latest()
    start = latest.step if latest else 0
    until = 100 if instance["scheduling"]["provisioningModel"] == "SPOT" else 300
    for step in range(start + 50, until + 1, 50):
        manager.save(step, {"model.pt": b"w"}, total_steps=300)
    if until < 300:
        server.fake.preempt(instance["name"])
        return
    result = Path(env["SPOT_TRAINING_RESULT_URI"].removeprefix("file://"))
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"exit_code": 0, "finished_at": 2.0e9, "token": env["SPOT_TRAINING_TOKEN"]}))
    server.fake.finish(instance["name"])


def test_dags_test_preempted_escalated_resumed(tmp_path):
    home, dags, prefix = tmp_path / "home", tmp_path / "dags", tmp_path / "ckpt"
    dags.mkdir()
    (dags / "gce_fake.py").write_text(DAG_FILE)
    with GCEServer() as server:
        server.fake.exhausted_zones.add("us-central1-a")
        server.fake.on_insert = lambda zone, inst: play_vm(zone, inst, server)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "TEST_GCE_EMULATOR": server.endpoint,
            "TEST_CHECKPOINT_PREFIX": f"file://{prefix}",
        }
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        proc = subprocess.run([AIRFLOW, "dags", "test", "gce_fake"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        summary = _return_value(env)
        inserts = server.fake.inserts()

    assert summary["outcome"] == "succeeded" and summary["preemptions"] == 1
    assert [(a["capacity"], a["outcome"], a["pool"]) for a in summary["attempts"]] == [
        ("spot", "preempted", "us-central1-b"), ("on_demand", "succeeded", "us-central1-b")]
    assert summary["attempts"][1]["start_step"] == 100
    assert [(r.path.split("/")[6], r.body["scheduling"]["provisioningModel"]) for r in inserts] == [
        ("us-central1-a", "SPOT"), ("us-central1-b", "SPOT"),
        ("us-central1-a", "STANDARD"), ("us-central1-b", "STANDARD")]
    assert CheckpointManager(str(prefix), keep_last=None).latest().step == 300


def _return_value(env: dict[str, str]) -> dict:
    code = textwrap.dedent('''
        import json
        from sqlalchemy import select
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        with create_session() as s:
            row = s.execute(select(XComModel.value).where(XComModel.dag_id == "gce_fake",
                XComModel.task_id == "train", XComModel.key == "return_value")).first()
        print(json.dumps(row[0] if row else None))
    ''')
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    value = json.loads(out.stdout.strip().splitlines()[-1])
    return json.loads(value) if isinstance(value, str) else value
