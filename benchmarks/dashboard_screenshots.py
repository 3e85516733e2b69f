"""Screenshots of every dashboard page in headless Chromium, for the README and for review.

Serves a temporary results folder holding links to the curated runs under ``results/`` (a real
search may still be running there) and a generated search in progress, opens each page at 1400 px
width and saves it at full height under ``results/screenshots/``. Needs Debian's ``chromium`` and ``chromium-driver``.

    python benchmarks/dashboard_screenshots.py
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

from dashboard_load import make_run
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from werkzeug.serving import make_server

from automl.dashboard import create_app
from automl.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
# Real runs under results/ (those present are linked in).
REAL_RUNS = ("reference-cnn", "reference-official-split", "quick_cluster", "quick_optuna_asha",
             "quick_optuna_nopruning")
PAGES = {
    "experiments": "/",
    "experiment": "/runs/search_in_progress",
    "experiment_reference": "/runs/reference",
    "experiment_reference-official-split": "/runs/reference-official-split",
    "models": "/runs/reference/models",
    "compare": "/compare?run=quick_optuna_asha&run=quick_optuna_nopruning",
}
WIDTH = 1400


def browser(profile: Path) -> webdriver.Chrome:
    """Debian's Chromium, headless, with no network traffic of its own."""
    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={WIDTH},1000"):
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_drawn(driver: webdriver.Chrome, timeout_s: float = 60) -> None:
    """Until the page content is there and every graph on it has drawn its SVG."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if driver.execute_script(
            "const main = document.querySelector('main');"
            "const graphs = document.querySelectorAll('.dash-graph');"
            "return !!main && main.innerText.includes('updated') &&"
            " [...graphs].every(g => g.querySelector('.main-svg'));"
        ):
            time.sleep(1.0)  # let plotly finish its transitions
            return
        time.sleep(0.25)
    raise TimeoutError(f"{driver.current_url} not drawn within {timeout_s} s")


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    out = ROOT / "results" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        results.mkdir()
        for name in REAL_RUNS:
            if RunLayout(ROOT / "results" / name).info_file.is_file():
                (results / name).symlink_to(ROOT / "results" / name)
        make_run(results / "search_in_progress", trials=30, epochs=20, prune=True, running=2, seed=3)
        server = make_server("127.0.0.1", 0, create_app(results).server, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        driver = browser(Path(tmp) / "profile")
        try:
            for name, path in PAGES.items():
                if path.startswith("/runs/") and not (results / path.split("/")[2]).exists():
                    continue
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                       {"width": WIDTH, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
                driver.get(f"http://127.0.0.1:{server.server_port}{path}")
                wait_drawn(driver)
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                       {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})
                time.sleep(1.0)  # plotly redraws at the new viewport
                driver.save_screenshot(str(out / f"{name}.png"))
                print(f"{out / name}.png  {WIDTH}x{height}")
        finally:
            driver.quit()
            server.shutdown()


if __name__ == "__main__":
    main()
