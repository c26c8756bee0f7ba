#!/usr/bin/env bash
# Creates .venv inside the repository and installs the project with everything the demo
# and the tests need. Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "==> installing airflow-spot-training and its dependencies into .venv (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch is pinned: 2.13.0 is the CPU build; anything else pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[torch,aws,gcp,dev]" "torch==2.13.0"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
