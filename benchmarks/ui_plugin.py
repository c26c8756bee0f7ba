"""UI plugin benchmark: page and API latency with 100, 1,000 and 10,000 recorded task instances.

One command::

    PYTHONPATH=. .venv/bin/python benchmarks/ui_plugin.py

Creates a PostgreSQL database of its own (127.0.0.1:5432, user postgres, as the e2e
suite), migrates it, starts a real ``airflow api-server`` (which loads the plugin),
and fills the database with recorded spot-training task instances (synthetic
ledgers built with the real core, stored as the operator stores them; see
``tests/ui_ledgers.py``), 100, then 1,000, then 10,000. At each size it times, with a
signed-in admin, over the loopback:

* ``GET /spot-training/api/overview`` (first page, totals and chart over every row),
  unfiltered and filtered to one DAG;
* ``GET /spot-training/api/task-instance`` (one task instance);
* the overview and task-instance pages in headless Chromium (Debian's), from
  navigation until the table rows / the timeline bars are drawn.

It prints a table of median and 95th-percentile milliseconds and writes them to
``benchmarks/results/ui_plugin.json``; ``--screenshot PATH`` also saves the overview
at the largest size. The database is dropped at the end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psycopg2
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.airflow_cluster import PG, PG_ADMIN_DB, free_port, python_path  # noqa: E402
from tests.e2e.browser import CHROMEDRIVER, CHROMIUM, chromium, sign_in  # noqa: E402
from tests.ui_ledgers import seed_command  # noqa: E402

DAGS = [f"retrain_{name}" for name in ("churn", "ranking", "fraud", "forecast", "vision")]
SIZES = (100, 1000, 10000)


def admin_sql(statement: str) -> None:
    conn = psycopg2.connect(dbname=PG_ADMIN_DB, **PG)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def environment(home: Path, db_name: str, port: int, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONPATH": python_path(ROOT, os.environ.get("PYTHONPATH")),
        "NO_PROXY": "*",
    })
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    return env


def timed(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    samples, ledgers_read = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        samples.append((time.perf_counter() - start) * 1000)
        if isinstance(result, requests.Response) and "X-Spot-Training-Ledgers-Read" in result.headers:
            ledgers_read.append(int(result.headers["X-Spot-Training-Ledgers-Read"]))
    samples.sort()
    figures = {"median_ms": round(statistics.median(samples), 1),
               "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 1)}
    if ledgers_read:
        figures["ledgers_read_max"] = max(ledgers_read)
    return figures


def api_timings(base: str, token: str, repeat: int) -> dict[str, dict[str, float]]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    def get(path: str) -> Callable[[], Any]:
        def call() -> Any:
            response = session.get(f"{base}/spot-training{path}", timeout=120)
            response.raise_for_status()
            return response
        return call

    one = "/api/task-instance?dag_id=retrain_churn&run_id=scheduled__000000&task_id=train"
    cold = timed(get("/api/overview"), 1)  # the first request after new rows reads their ledgers
    return {
        "api_overview_first": cold,
        "api_overview": timed(get("/api/overview"), repeat),
        "api_overview_one_dag": timed(get(f"/api/overview?dag_id={DAGS[0]}"), repeat),
        "api_task_instance": timed(get(one), repeat),
        "page_overview_html": timed(get("/overview"), repeat),
    }


def page_timings(driver: Any, base: str, repeat: int) -> dict[str, dict[str, float]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def load(url: str, selector: str) -> Callable[[], Any]:
        def call() -> Any:
            driver.get("about:blank")
            driver.get(url)
            WebDriverWait(driver, 120, poll_frequency=0.01).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, selector))
        return call

    ti = f"{base}/spot-training/task-instance?dag_id=retrain_churn&run_id=scheduled__000000&task_id=train"
    return {
        "browser_overview": timed(load(f"{base}/spot-training/overview", "#runs tr.run-row"), repeat),
        "browser_task_instance": timed(load(ti, "#timeline rect.attempt-bar"), repeat),
    }


def wait_up(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the api-server exited {proc.returncode}")
        try:
            if requests.get(f"{base}/api/v2/version", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError("the api-server did not answer")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="spot-ui-bench-"))
    db_name = f"spot_ui_bench_{uuid.uuid4().hex[:10]}"
    port, password = free_port(), secrets.token_hex(8)
    base = f"http://127.0.0.1:{port}"
    env = environment(work, db_name, port, password)
    bin_dir = Path(sys.executable).parent
    admin_sql(f'CREATE DATABASE "{db_name}"')
    server = None
    results: dict[str, Any] = {"sizes": {}}
    try:
        subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        log = open(work / "api-server.log", "ab")
        server = subprocess.Popen([str(bin_dir / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        wait_up(base, server)
        token = requests.post(f"{base}/auth/token", json={"username": "admin", "password": password},
                              timeout=30).json()["access_token"]
        seeded = 0
        with chromium() as driver:
            sign_in(driver, base, token)
            for size in args.sizes:
                subprocess.run(seed_command(sys.executable, count=size - seeded, first=seeded, dag_ids=DAGS),
                               env=env, check=True, cwd=str(ROOT))
                seeded = size
                figures = {**api_timings(base, token, args.repeat), **page_timings(driver, base, args.page_repeat)}
                results["sizes"][str(size)] = {**figures, "load_average_1min": round(os.getloadavg()[0], 2)}
                print_size(size, figures)
            if args.screenshot:
                from selenium.webdriver.common.by import By
                from selenium.webdriver.support.ui import WebDriverWait

                driver.get(f"{base}/spot-training/overview")
                WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tr.run-row"))
                driver.save_screenshot(args.screenshot)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        admin_sql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_size(size: int, figures: dict[str, dict[str, float]]) -> None:
    print(f"\n{size:,} recorded task instances (machine load average {os.getloadavg()[0]:.1f})", flush=True)
    for name, value in figures.items():
        read = f"   ledgers read {value['ledgers_read_max']}" if "ledgers_read_max" in value else ""
        print(f"  {name:<24} median {value['median_ms']:>8.1f} ms   p95 {value['p95_ms']:>8.1f} ms{read}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeat", type=int, default=20, help="requests per API figure")
    parser.add_argument("--page-repeat", type=int, default=5, help="page loads per browser figure")
    parser.add_argument("--screenshot", help="save the overview at the largest size to this PNG")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ui_plugin.json"))
    args = parser.parse_args()
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        print(f"needs {', '.join(missing)}: run scripts/setup.sh as root", file=sys.stderr)
        return 2
    results = run(args)
    results["settings"] = {"repeat": args.repeat, "page_repeat": args.page_repeat, "dags": len(DAGS),
                           "cpus": os.cpu_count()}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
