#!/usr/bin/env bash
# The main job: set everything up, then run the local spot-training demo DAG end to end
# with `airflow dags test` on SQLite. No cloud account needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/run_demo.py" "$@"
