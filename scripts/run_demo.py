"""Run the local demo DAG with `airflow dags test` and print what happened.

Airflow's own output goes to .airflow/demo/dags-test.log; this prints the lines
that tell the story (launches, preemptions, policy decisions, progress) and, at
the end, the ledger table taken from the task's XCom result.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / ".airflow" / "demo"
DAG_ID = "spot_training_local_demo"
STORY = re.compile(
    r"launched attempt|ended: |escalation policy|re-attaching|attempt \d+ on \w+: running|interrupted|DagRun Finished"
)


def main() -> int:
    HOME.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    print(f"==> airflow db migrate (SQLite under {HOME})", flush=True)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    log_path = HOME / "dags-test.log"
    print(f"==> airflow dags test {DAG_ID}   (full log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([airflow, "dags", "test", DAG_ID], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if STORY.search(line):
                print("   " + _tidy(line), flush=True)
        rc = proc.wait()
    if rc != 0:
        print(f"airflow dags test failed with exit code {rc}; see {log_path}", file=sys.stderr)
        return rc
    summary = _summary(env)
    if summary is None:
        print("the run finished but its ledger was not found in XCom", file=sys.stderr)
        return 1
    from airflow_spot_training.core.ledger import format_summary

    print("\n==> spot-training ledger (task 'train', XCom return value)\n")
    print(format_summary(summary))
    ok = summary["outcome"] == "succeeded" and summary["preemptions"] >= 2 and summary["escalations"]
    print("\nDemo " + ("finished: preempted, escalated to on-demand, resumed from checkpoints."
                       if ok else "did NOT show the whole loop."))
    return 0 if ok else 1


def _tidy(line: str) -> str:
    line = re.sub(r"^\S+Z \[\w+\s*\] ", "", line.rstrip())
    return re.sub(r" \[airflow[^\]]*\].*$", "", line)


def _summary(env: dict[str, str]) -> dict | None:
    code = f"""
import json
from sqlalchemy import select
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
with create_session() as s:
    row = s.execute(select(XComModel.value).where(XComModel.dag_id == {DAG_ID!r},
        XComModel.task_id == "train", XComModel.key == "return_value")
        .order_by(XComModel.timestamp.desc()).limit(1)).first()
print(json.dumps(row[0] if row else None))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    value = json.loads(out.stdout.strip().splitlines()[-1])
    if isinstance(value, str):
        value = json.loads(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
