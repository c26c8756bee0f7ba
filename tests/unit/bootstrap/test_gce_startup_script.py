"""The packaged GCE startup script, run by bash against the fake metadata server, GCS and Compute API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airflow_spot_training.backends.compute_engine import ComputeEngineSpotBackend, startup_script_template
from tests.fakes.gce_server import GCEServer
from tests.fakes.launch import launch_request

pytestmark = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("curl") and shutil.which("python3")),
                                reason="the startup script needs bash, curl and python3")
ZONE = "us-central1-a"


SA = "trainer@test-project.iam.gserviceaccount.com"

def boot(server: GCEServer, tmp_path: Path, command: str, preempted: bool = False,
         secrets: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Create the VM in the fake cloud with the metadata the backend builds, then run its startup script."""
    backend = ComputeEngineSpotBackend(zones=[ZONE], machine_type="e2-small", command=command,
                                       project_id="test-project", emulator_host=server.endpoint,
                                       env={"EXTRA": "it's here"}, service_account=SA, secrets=secrets or {})
    request = launch_request("gs://bucket/runs/r1")
    instance = backend._instance(request, ZONE, "test-project")
    body = json.loads(type(instance).to_json(instance))
    server.fake.instances[(ZONE, instance.name)] = {**body, "status": "RUNNING"}
    metadata = {item.key: item.value for item in instance.metadata.items}
    server.fake.gcs_root = tmp_path / "gcs"
    server.fake.metadata.update({
        **{f"instance/attributes/{k}": v for k, v in metadata.items()},
        "instance/name": instance.name,
        "instance/zone": f"projects/123/zones/{ZONE}",
        "project/project-id": "test-project",
        "instance/service-accounts/default/token": json.dumps({"access_token": "t0k3n", "expires_in": 3600}),
        "instance/preempted": "TRUE" if preempted else "FALSE",
    })
    script = tmp_path / "startup.sh"
    script.write_text(startup_script_template())
    env = {**os.environ, "SPOT_TRAINING_METADATA_URL": server.endpoint, "SPOT_TRAINING_STORAGE_URL": server.endpoint,
           "SPOT_TRAINING_COMPUTE_URL": server.endpoint, "SPOT_TRAINING_SECRETS_URL": server.endpoint}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    return proc, {"name": instance.name, "request": request}


def test_runs_the_command_with_the_contract_writes_the_result_and_deletes_the_vm(tmp_path):
    with GCEServer() as server:
        out = tmp_path / "seen.json"
        command = (f"python3 -c 'import json, os; json.dump(dict(os.environ), open(\"{out}\", \"w\"))'; exit 3")
        proc, vm = boot(server, tmp_path, command)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(out.read_text())
        assert seen["SPOT_TRAINING_CHECKPOINT_URI"] == "gs://bucket/runs/r1"
        assert seen["SPOT_TRAINING_ATTEMPT"] == "1" and seen["EXTRA"] == "it's here"
        result = json.loads((tmp_path / "gcs" / "bucket" / "runs/r1/_results/attempt-1.json").read_text())
        assert result["exit_code"] == 3 and result["zone"] == ZONE and result["instance"] == vm["name"]
        assert result["token"] == vm["request"].token  # so a later run at the same prefix never takes it
        assert server.fake.calls("DELETE", f"/zones/{ZONE}/instances/{vm['name']}")
        assert server.fake.live_instances() == []


def test_a_preempted_vm_writes_no_result_and_leaves_deletion_to_the_cloud(tmp_path):
    with GCEServer() as server:
        proc, vm = boot(server, tmp_path, "exit 143", preempted=True)
        assert proc.returncode == 0, proc.stderr
        assert not (tmp_path / "gcs").exists()
        assert not server.fake.calls("DELETE")


def test_secrets_are_resolved_on_the_vm_and_never_in_its_metadata(tmp_path):
    with GCEServer() as server:
        version = "projects/test-project/secrets/hf-token/versions/latest"
        server.fake.secrets[version] = "s3cr3t value"
        out = tmp_path / "seen.json"
        command = f"python3 -c 'import json, os; json.dump(dict(os.environ), open(\"{out}\", \"w\"))'"
        proc, vm = boot(server, tmp_path, command, secrets={"HF_TOKEN": "projects/test-project/secrets/hf-token"})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(out.read_text())["HF_TOKEN"] == "s3cr3t value"
        metadata = json.dumps({k: v for k, v in server.fake.metadata.items() if k.startswith("instance/attributes/")})
        assert "s3cr3t" not in metadata and "hf-token" in metadata
        (access,) = [r for r in server.fake.requests if r.path.endswith(":access")]
        assert access.path == f"/v1/{version}:access"


def test_an_environment_name_that_is_shell_code_is_refused_by_the_script(tmp_path):
    with GCEServer() as server:
        proc, vm = boot(server, tmp_path, "true")
        ran = tmp_path / "pwned"
        attributes = f"instance/attributes/spot-training-env"
        env = json.loads(server.fake.metadata[attributes])
        server.fake.metadata[attributes] = json.dumps({**env, f"X=1; touch {ran}; Y": "v"})
        proc = subprocess.run(["bash", str(tmp_path / "startup.sh")], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env={**os.environ, "SPOT_TRAINING_METADATA_URL": server.endpoint,
                                                 "SPOT_TRAINING_STORAGE_URL": server.endpoint,
                                                 "SPOT_TRAINING_COMPUTE_URL": server.endpoint})
        assert not ran.exists()
        assert "refusing the environment variable name" in proc.stderr + proc.stdout
