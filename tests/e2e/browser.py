"""A real headless browser for the UI tests: Debian's Chromium driven by its ChromeDriver.

``scripts/setup.sh`` installs both (packages ``chromium`` and ``chromium-driver``) when
it runs as root; without them the browser tests are skipped and say why. Each browser
gets a fresh profile directory and the flags that keep Chromium off the network.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1440,1100")


def skip_without_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run scripts/setup.sh as root (it installs "
                    "Debian's chromium and chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")


@contextmanager
def chromium() -> Iterator[object]:
    """A Selenium WebDriver on a headless Chromium with a throwaway profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="spot-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def sign_in(driver: object, base_url: str, token: str) -> None:
    """Become a signed-in user of the api-server: its session cookie, as the login page sets it."""
    driver.get(f"{base_url}/api/v2/version")  # any page of the origin, to set a cookie on it
    driver.add_cookie({"name": "_token", "value": token, "path": "/"})
