"""The pure core and the training runtime import neither Airflow nor a cloud SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ["airflow", "boto3", "botocore", "aiobotocore", "s3fs", "gcsfs", "google", "moto"]


def _import_with_blocked(modules: list[str]) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
        + "".join(f"import {m}\n" for m in modules)
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_core_and_simulator_are_pure():
    result = _import_with_blocked([
        "airflow_spot_training.core.policy", "airflow_spot_training.core.policies",
        "airflow_spot_training.core.ledger", "airflow_spot_training.core.contract",
        "airflow_spot_training.core.checkpoint_protocol", "airflow_spot_training.core.deadline",
        "airflow_spot_training.core.reasons", "airflow_spot_training.core.folder_sync",
        "airflow_spot_training.core.spend", "airflow_spot_training.core.pool_health",
        "airflow_spot_training.simulate",
    ])
    assert result.returncode == 0, result.stderr


def test_training_runtime_runs_without_airflow_or_cloud_sdks():
    result = _import_with_blocked([
        "airflow_spot_training.runtime", "airflow_spot_training.runtime.torch_state",
        "airflow_spot_training.examples.regression",
        "airflow_spot_training.runtime.folder_sync", "airflow_spot_training.runtime.checkpoint_folder",
        "airflow_spot_training.examples.plain_folder",
    ])
    assert result.returncode == 0, result.stderr


def test_framework_adapters_need_their_framework_only():
    result = _import_with_blocked([
        "airflow_spot_training.runtime.huggingface", "airflow_spot_training.runtime.lightning",
        "airflow_spot_training.examples.hf_tiny", "airflow_spot_training.examples.lightning_tiny",
    ])
    assert result.returncode == 0, result.stderr


def test_no_core_module_names_airflow():
    for path in (ROOT / "airflow_spot_training" / "core").rglob("*.py"):
        text = path.read_text()
        assert "import airflow\n" not in text and "from airflow." not in text, path


def test_what_the_ui_draws_is_computed_without_airflow():
    result = _import_with_blocked(["airflow_spot_training.ui.ledger_view"])
    assert result.returncode == 0, result.stderr
