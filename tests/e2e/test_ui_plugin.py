"""The UI plugin on the distributed cluster, seen in a real headless browser.

The cluster's api-server loads the plugin with no configuration. A training is reclaimed
twice on spot and escalated to on-demand (``e2e_ui``); the test opens Airflow's own UI
at that task instance's "Spot training" tab and at the "Spot training" navigation page,
and checks what a person sees there against the ledger: the attempt bars, the preemption
marks, the escalation reason, the savings. A second training (``e2e_ui_live``) is watched
while it runs: a reclaim made by hand shows up in the open page without a reload.

Access control runs against a second api-server on the same database with the FAB auth
manager (per-DAG permissions): anonymous requests to every plugin endpoint are refused,
and a user who may read only ``e2e_ui_live`` sees nothing of ``e2e_ui``.

Screenshots of both pages go to ``$SPOT_UI_SCREENSHOTS`` (the docs' images come from
there) or the test's temporary directory.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from airflow_spot_training.backends.local import request_preemption
from tests.e2e.airflow_cluster import ADMIN_PASSWORD, ADMIN_USER, AirflowCluster
from tests.e2e.browser import chromium, sign_in, skip_without_chromium
from tests.e2e.fab_api_server import FabApiServer
from tests.ui_ledgers import RUN_SPACING, T0, seed_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

UI = "/spot-training"
TAB = "plugin/spot-training-task-instance"
ENDPOINTS = ["/overview", "/task-instance", "/static/common.js", "/static/spot_training.css",
             "/static/icon.svg", "/api/overview",
             "/api/task-instance?dag_id=e2e_ui&run_id=x&task_id=train"]
WAIT = 120  # an upper bound for what the browser waits for, never an expectation of speed


def usd(value: float) -> str:
    """The pages' money format (common.js ``usd``)."""
    return f"{'-' if value < 0 else ''}${abs(value):.{2 if abs(value) >= 1 else 4}f}"


def starts(prefix: Path) -> list[str]:
    path = prefix / "_evidence" / "starts.jsonl"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def runs(airflow_cluster: AirflowCluster) -> dict[str, str]:
    """One run of each UI DAG, triggered at once; the escalated one has finished."""
    cluster = airflow_cluster
    for dag in ("e2e_ui", "e2e_ui_live"):
        cluster.wait_for_dag(dag)
    triggered = {dag: cluster.trigger(dag) for dag in ("e2e_ui", "e2e_ui_live")}
    assert cluster.wait_for_run("e2e_ui", triggered["e2e_ui"], timeout=300) == "success"
    return triggered


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    target = os.environ.get("SPOT_UI_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    skip_without_chromium()
    with chromium() as driver:
        yield driver


def admin_token(cluster: AirflowCluster) -> str:
    r = requests.post(f"{cluster.base_url}/auth/token", json={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
                      timeout=30)
    r.raise_for_status()
    return r.json()["access_token"]


def in_plugin_frame(driver, url: str):
    """Open an Airflow UI page and step into the plugin's iframe once Airflow drew it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.switch_to.default_content()
    driver.get(url)
    WebDriverWait(driver, WAIT).until(EC.frame_to_be_available_and_switch_to_it(
        (By.CSS_SELECTOR, "iframe[title='Spot training']")))
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))


def test_the_api_server_loads_the_plugin(airflow_cluster: AirflowCluster):
    plugins = {p["name"]: p for p in airflow_cluster.api("GET", "/plugins")["plugins"]}
    plugin = plugins["spot_training"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == [UI]
    assert {v["destination"] for v in plugin["external_views"]} == {"task_instance", "nav"}
    assert airflow_cluster.api("GET", "/plugins/importErrors")["import_errors"] == []


def test_task_instance_view_shows_the_escalated_training(airflow_cluster: AirflowCluster, runs, browser,
                                                         screenshots: Path):
    from selenium.webdriver.common.by import By

    cluster, run_id = airflow_cluster, runs["e2e_ui"]
    ledger = cluster.xcom("e2e_ui", run_id, "train", key="ledger")
    assert [a["capacity"] for a in ledger["attempts"]] == ["spot", "spot", "on_demand"]
    sign_in(browser, cluster.base_url, admin_token(cluster))
    wait = in_plugin_frame(browser, f"{cluster.base_url}/dags/e2e_ui/runs/{run_id}/tasks/train/{TAB}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline rect.attempt-bar"))

    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.attempt-bar")
    assert [b.get_attribute("data-capacity") for b in bars] == ["spot", "spot", "on_demand"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .preemption-mark")) == 2 == ledger["preemptions"]
    assert browser.find_element(By.CSS_SELECTOR, "#attempt-count .value").text == "3"
    assert browser.find_element(By.CSS_SELECTOR, "#preemption-count .value").text == "2"
    [reason] = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#escalations .reason")]
    assert reason == ledger["escalations"][0]["reason"] and "max_preemptions=2" in reason
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline line.escalation")
    saved, fraction = ledger["savings"]["saved"], ledger["savings"]["saved_fraction"]
    assert saved > 0
    savings = browser.find_element(By.CSS_SELECTOR, "#savings .value")
    assert savings.text == f"{usd(saved)} ({round(fraction * 100)}%)"
    assert float(savings.get_attribute("data-value")) == pytest.approx(saved, abs=1e-6)
    checkpoint = browser.find_element(By.CSS_SELECTOR, "#checkpoint .value").text
    assert checkpoint == f"step {ledger['total_steps']} / {ledger['total_steps']}"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attempts tr.attempt-row")) == 3
    browser.switch_to.default_content()
    browser.save_screenshot(str(screenshots / "ui-task-instance.png"))


OVERVIEW_AS_SEEN = """
const rows = [...document.querySelectorAll('#runs tr.run-row')].map((r) => ({
  dag: r.dataset.dag, run: r.dataset.run, preemptions: r.querySelector('.preemptions').textContent,
  escalations: r.querySelector('.escalations').textContent, outcome: r.querySelector('.outcome').textContent,
  saved: r.querySelector('.saved').textContent}));
const bars = (chart) => [...document.querySelectorAll(`#${chart} .chart-point`)].map((b) => ({
  dag: b.dataset.dag, value: Number(b.dataset.value)}));
return {rows, saved: bars('chart-savings'), preemptions: bars('chart-preemptions')};
"""


def overview_as_seen(driver) -> dict:
    """The overview's table rows and chart bars, read in one go (the page redraws as it refreshes)."""
    return driver.execute_script(OVERVIEW_AS_SEEN)


def test_overview_lists_the_run_with_its_figures(airflow_cluster: AirflowCluster, runs, browser,
                                                 screenshots: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cluster, run_id = airflow_cluster, runs["e2e_ui"]
    ledger = cluster.xcom("e2e_ui", run_id, "train", key="ledger")
    sign_in(browser, cluster.base_url, admin_token(cluster))
    wait = in_plugin_frame(browser, f"{cluster.base_url}/plugin/spot-training")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#filter-dag option[value='e2e_ui']"))
    Select(browser.find_element(By.ID, "filter-dag")).select_by_value("e2e_ui")
    seen = wait.until(lambda d: (v := overview_as_seen(d))["rows"] and {r["dag"] for r in v["rows"]} == {"e2e_ui"}
                      and v)

    [row] = [r for r in seen["rows"] if r["run"] == run_id]
    assert row["preemptions"] == "2"
    assert row["escalations"] == "1 (preemptions)"
    assert row["outcome"] == "succeeded"
    assert row["saved"] == usd(ledger["savings"]["saved"])
    assert sum(b["value"] for b in seen["saved"] if b["dag"] == "e2e_ui") == pytest.approx(
        sum(float(r["saved"].lstrip("$")) for r in seen["rows"]), abs=1e-3)
    assert sum(b["value"] for b in seen["preemptions"] if b["dag"] == "e2e_ui") == sum(
        int(r["preemptions"]) for r in seen["rows"])
    Select(browser.find_element(By.ID, "filter-dag")).select_by_value("")
    wait.until(lambda d: len({r["dag"] for r in overview_as_seen(d)["rows"]}) > 1)
    browser.switch_to.default_content()
    browser.save_screenshot(str(screenshots / "ui-overview.png"))


def test_a_running_trainings_view_updates_without_a_reload(airflow_cluster: AirflowCluster, runs, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cluster, run_id = airflow_cluster, runs["e2e_ui_live"]
    prefix = cluster.checkpoint_base / "e2e_ui_live" / run_id / "train"
    cluster.wait_until(lambda: cluster.task_instance("e2e_ui_live", run_id, "train")["state"] == "deferred"
                       and starts(prefix), WAIT, "the live training to run, deferred")
    sign_in(browser, cluster.base_url, admin_token(cluster))
    browser.get(f"{cluster.base_url}{UI}/task-instance?dag_id=e2e_ui_live&run_id={run_id}&task_id=train"
                "&map_index={MAP_INDEX}")
    wait = WebDriverWait(browser, WAIT, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline rect.attempt-bar")) == 1)
    assert browser.find_element(By.ID, "live").text == "live"
    browser.execute_script("window.__loadedOnce = true;")  # gone if the page reloads

    key = cluster.run_key("e2e_ui_live", run_id, "train")
    assert request_preemption(cluster.state_dir / key / "attempt-1")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline rect.attempt-bar")) == 2)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#preemption-count .value").text == "1")
    assert browser.execute_script("return window.__loadedOnce === true;")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .preemption-mark")) == 1
    assert int(browser.find_element(By.ID, "updated-at").get_attribute("data-refreshes")) > 1
    cluster.mark_task_instance("e2e_ui_live", run_id, "train", "failed")  # its on_kill stops the training


@pytest.fixture(scope="module")
def fab(airflow_cluster: AirflowCluster, runs):
    pytest.importorskip("airflow.providers.fab", reason="apache-airflow-providers-fab is in the dev extra")
    roles = {"LiveOnly": [("can_read", "DAG:e2e_ui_live"), ("can_read", "DAG Runs"),
                          ("can_read", "Task Instances")]}
    users = [{"username": "viewer", "password": "viewer-pw", "role": "Viewer"},
             {"username": "live-only", "password": "live-pw", "role": "LiveOnly"}]
    with FabApiServer(airflow_cluster, roles, users) as server:
        yield server


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_anonymous_requests_are_refused(airflow_cluster: AirflowCluster, fab: FabApiServer, endpoint: str):
    for base in (airflow_cluster.base_url, fab.base_url):
        assert requests.get(f"{base}{UI}{endpoint}", timeout=30).status_code == 401, base
        forged = requests.get(f"{base}{UI}{endpoint}", headers={"Authorization": "Bearer not-a-token"}, timeout=30)
        assert forged.status_code in (401, 403), base


def test_a_user_without_access_to_a_dag_sees_none_of_its_runs(fab: FabApiServer, runs):
    ui, live = runs["e2e_ui"], runs["e2e_ui_live"]
    viewer = {"Authorization": f"Bearer {fab.token('viewer')}"}
    live_only = {"Authorization": f"Bearer {fab.token('live-only')}"}

    def get(path: str, headers: dict) -> requests.Response:
        return requests.get(f"{fab.base_url}{UI}{path}", headers=headers, timeout=60)

    everything = get("/api/overview?limit=500", viewer).json()
    assert {"e2e_ui", "e2e_ui_live"} <= {r["dag_id"] for r in everything["rows"]}
    assert get(f"/api/task-instance?dag_id=e2e_ui&run_id={ui}&task_id=train", viewer).json()["found"]

    mine = get("/api/overview?limit=500", live_only).json()
    assert {r["dag_id"] for r in mine["rows"]} == {"e2e_ui_live"}
    assert mine["total_entries"] == len(mine["rows"]) and mine["dag_ids"] == ["e2e_ui_live"]
    assert [s["dag_id"] for s in mine["chart"]["series"]] == ["e2e_ui_live"]
    assert get(f"/api/task-instance?dag_id=e2e_ui_live&run_id={live}&task_id=train", live_only).json()["found"]
    assert get(f"/api/task-instance?dag_id=e2e_ui&run_id={ui}&task_id=train", live_only).status_code == 403
    assert get("/api/overview?dag_id=e2e_ui", live_only).status_code == 403
    assert get("/overview", live_only).status_code == 200  # the page itself holds no data


SEEDED_DAGS = ["ui_seed_a", "ui_seed_b", "ui_seed_c"]
SEEDED = 30  # run i of DAG SEEDED_DAGS[i % 3], run_after T0 + i * RUN_SPACING (tests/ui_ledgers.py)


@pytest.fixture(scope="module")
def seeded(airflow_cluster: AirflowCluster) -> requests.Session:
    """Recorded ledgers of three more DAGs in the cluster's database; an admin session of the API."""
    subprocess.run(seed_command(str(airflow_cluster.bin / "python"), count=SEEDED, first=0, dag_ids=SEEDED_DAGS),
                   env=airflow_cluster.env, cwd=str(airflow_cluster.repo_root), check=True, timeout=300)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {admin_token(airflow_cluster)}"
    return session


def test_overview_filters_and_pages(airflow_cluster: AirflowCluster, seeded: requests.Session):
    def overview(**params) -> dict:
        r = seeded.get(f"{airflow_cluster.base_url}{UI}/api/overview", params=params, timeout=60)
        r.raise_for_status()
        return r.json()

    one_dag = overview(dag_id="ui_seed_a", limit=500)
    assert one_dag["total_entries"] == SEEDED // 3 and {r["dag_id"] for r in one_dag["rows"]} == {"ui_seed_a"}
    assert [r["run_after"] for r in one_dag["rows"]] == sorted((r["run_after"] for r in one_dag["rows"]),
                                                               reverse=True)
    assert one_dag["totals"]["task_instances"] == SEEDED // 3
    assert sum(sum(s["runs"]) for s in one_dag["chart"]["series"]) == SEEDED // 3
    assert one_dag["totals"]["preemptions"] == sum(r["preemptions"] for r in one_dag["rows"])

    pages = [overview(dag_id="ui_seed_a", limit=4, offset=offset)["rows"] for offset in (0, 4, 8)]
    assert [len(p) for p in pages] == [4, 4, 2] and sum(pages, []) == one_dag["rows"]

    since, until = T0 + 4 * RUN_SPACING, T0 + 12 * RUN_SPACING  # runs 4 to 11
    window = overview(since=since.isoformat(), until=until.isoformat(), limit=500)
    assert sorted(r["run_id"] for r in window["rows"]) == [f"scheduled__{i:06d}" for i in range(4, 12)]

    assert overview(dag_id="ui_seed_b", outcome="succeeded")["total_entries"] == SEEDED // 3
    assert overview(dag_id="ui_seed_b", outcome="failed")["total_entries"] == 0
    everything = overview(limit=500)
    assert set(SEEDED_DAGS) | {"e2e_ui"} <= set(everything["dag_ids"])

    base = f"{airflow_cluster.base_url}{UI}/api"
    assert seeded.get(f"{base}/overview", params={"limit": 501}, timeout=30).status_code == 422
    missing = seeded.get(f"{base}/task-instance", params={"dag_id": "ui_seed_a", "run_id": "nope",
                                                          "task_id": "train"}, timeout=30)
    assert missing.status_code == 404
    found = seeded.get(f"{base}/task-instance", params={"dag_id": "ui_seed_a", "run_id": "scheduled__000000",
                                                        "task_id": "train"}, timeout=30).json()
    row = next(r for r in one_dag["rows"] if r["run_id"] == "scheduled__000000")
    assert found["found"] and found["preemptions"] == row["preemptions"]
    assert found["saved"] == pytest.approx(row["saved"], abs=1e-6)


def test_links_leave_the_iframe(airflow_cluster: AirflowCluster, seeded: requests.Session, browser):
    """Airflow's iframe sandbox allows no popups and no top navigation: an attempt's console
    link opens a new window all the same (through the parent), an http(s) link only; the
    overview's task link moves Airflow's whole UI to that task instance's tab."""
    from selenium.webdriver.common.by import By

    cluster = airflow_cluster
    sign_in(browser, cluster.base_url, admin_token(cluster))
    first = "scheduled__000000"
    wait = in_plugin_frame(browser, f"{cluster.base_url}/dags/ui_seed_a/runs/{first}/tasks/train/{TAB}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#attempts a.attempt-link"))
    links = browser.find_elements(By.CSS_SELECTOR, "#attempts .attempt-link")
    assert [link.tag_name for link in links[:2]] == ["a", "span"]  # the javascript: URL is not a link
    assert links[0].get_attribute("href") == f"http://127.0.0.1:9/console/{first}/1"
    windows = len(browser.window_handles)
    links[0].click()
    cluster.wait_until(lambda: len(browser.window_handles) == windows + 1, WAIT, "the console link's window")
    for handle in browser.window_handles[windows:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])

    wait = in_plugin_frame(browser, f"{cluster.base_url}/plugin/spot-training")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs a.task-link"))
    link = browser.find_element(By.CSS_SELECTOR, "#runs tr.run-row a.task-link")
    row = link.find_element(By.XPATH, "./ancestor::tr")
    run_id, dag_id = row.get_attribute("data-run"), row.get_attribute("data-dag")
    link.click()
    browser.switch_to.default_content()
    cluster.wait_until(lambda: f"/dags/{dag_id}/runs/{run_id}/tasks/train/{TAB}" in browser.current_url, WAIT,
                       "Airflow's UI to open the task instance's tab")
