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
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[torch,hf,lightning,aws,gcp,dev]" "torch==2.13.0"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

# `docker-compose config` validates docker-compose.yaml in the tests (no Docker engine needed).
# Debian's package is the reference; installed only when missing and we may (root, apt-get).
# Without it, that one test is skipped and says why.
if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's docker-compose (to validate docker-compose.yaml)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
      || echo "warning: could not install docker-compose; the compose validation test will be skipped" >&2
  else
    echo "note: docker-compose is not installed and this is not root; the compose validation test will be skipped" >&2
  fi
fi

# The UI plugin's browser tests drive Debian's Chromium through its ChromeDriver (a browser
# download of Playwright's or Selenium's own cannot work offline). Installed only when
# missing and we may (root, apt-get); without them those tests are skipped and say why.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium and chromium-driver (for the UI plugin's browser tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: could not install chromium; the UI browser tests will be skipped" >&2
  else
    echo "note: chromium / chromium-driver are not installed and this is not root; the UI browser tests will be skipped" >&2
  fi
fi
