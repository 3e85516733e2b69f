"""The dashboard on generated results folders: pages, figures, robustness, downloads, and a real headless browser."""

import base64
import io
import json
import math
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from automl.dashboard import _figures as figures
from automl.dashboard import create_app, serve
from automl.dashboard._importance import param_importances
from automl.files import write_json
from automl.layout import RunLayout
from automl.metrics import classification_metrics
from automl.objective import Objective
from automl.store import RunStore, utc_now, write_run_info

METRIC = "val_balanced_accuracy"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def metrics(value):
    return {"loss": 1.0, "accuracy": 0.5, METRIC: value, "val_macro_f1": value / 2, "val_accuracy": 0.6,
            "val_auc": 0.7, "val_loss": 1.2, "learning_rate": 1e-3}


def make_run(results: Path, name: str, trials: int = 6, epochs: int = 4, running: int = 1,
             families: tuple[str, ...] = ()) -> Path:
    """A run as a search writes it: odd trials pruned after 2 epochs, the last ``running`` still going; with
    ``families``, trial i is of family ``families[i % len(families)]``."""
    run_dir = results / name
    write_run_info(run_dir, name=name, status="running" if running else "finished", engine="ray", searcher="optuna",
                   scheduler="asha", metric=METRIC, mode="max", num_samples=trials + 2, max_epochs=epochs,
                   started=utc_now(), task="binary", image_size=[28, 28], split="lesion-grouped, seed 0")
    (run_dir / "spec.yaml").write_text("hyperparameters:\n  learning_rate: {float: [1.0e-4, 1.0e-2], log: true}\n")
    store = RunStore(run_dir, Objective.of(METRIC), max_epochs=epochs, flush_every_s=math.inf)
    for i in range(trials):
        blocks = 2 + i % 3
        params = {"conv_blocks": blocks, "learning_rate": 10 ** -(2 + i / 3), "optimizer": ("adam", "sgd")[i % 2],
                  "batch_norm": i % 3 == 0, **({"block_dropout_3": 0.05 * i} if blocks >= 3 else {})}
        if families:
            params["family"] = families[i % len(families)]
        store.trial_started(f"trial{i:02d}", params)
        for epoch in range(1, (epochs if i % 2 == 0 else 2) + 1):
            report = metrics(0.05 * i + 0.05 * epoch) | {"parameters": 10_000 * blocks + i}
            store.epoch(f"trial{i:02d}", epoch, report, 1.5 * epoch, {"hostname": "h"})
        if i < trials - running:
            store.trial_finished(f"trial{i:02d}", "completed")
    store.flush(force=True)
    return run_dir


def add_models(run_dir: Path) -> None:
    """Retrain, ensemble and export output of a binary run, small but in the real formats."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    results = {}
    for model, skill in (("m01", 1.0), ("m02", 1.5), ("ensemble", 2.0)):
        logits = rng.normal(0, 1, (200, 2))
        logits[np.arange(200), y] += skill
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        results[model] = {"val": classification_metrics(y, probs, ("benign", "malignant")),
                          "test": classification_metrics(y, probs, ("benign", "malignant"))}
    results["ensemble"]["test_ci95"] = {"balanced_accuracy": [0.7, 0.8]}
    members = pd.DataFrame([{"member_id": m, "trial_id": t, "seed": 0, "epochs": 4, "best_epoch": 3, "parameters": n,
                             "test_balanced_accuracy": results[m]["test"]["balanced_accuracy"]}
                            for m, t, n in (("m01", "trial04", 40_119), ("m02", "trial02", 1_250_000))])
    (run_dir / "retrain").mkdir()
    members.to_parquet(run_dir / "retrain" / "members.parquet", index=False)
    write_json(run_dir / "ensemble" / "metrics.json", results)
    write_json(run_dir / "ensemble" / "ensemble.json", {
        "method": "greedy", "members": ["m01", "m02"], "weights": {"m01": 0.5, "m02": 0.5},
        "greedy_picks": ["m02", "m01"], "best_member": "m02", "classes": ["benign", "malignant"], "task": "binary"})
    (run_dir / "ensemble" / "roc.png").write_bytes(b"\x89PNG fake")
    (run_dir / "model" / "saved_model").mkdir(parents=True)
    (run_dir / "model" / "model.keras").write_bytes(b"weights")
    (run_dir / "model" / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (run_dir / "model" / "model_card.md").write_text("# model card\n")


@pytest.fixture
def results(tmp_path) -> Path:
    """A finished run with retrained members, an ensemble and an exported model, and a run in progress."""
    results = tmp_path / "results"
    add_models(make_run(results, "finished_run", running=0))
    make_run(results, "live_run", running=1)
    return results


def page(client, path: str, search: str = "", shown=None):
    """What the browser asks for to draw ``path``: Dash's callback for the page content."""
    payload = {"output": "..page.children...shown.data..",
               "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
               "inputs": [{"id": "url", "property": "pathname", "value": path},
                          {"id": "url", "property": "search", "value": search},
                          {"id": "refresh", "property": "n_intervals", "value": 1}],
               "changedPropIds": ["refresh.n_intervals"],
               "state": [{"id": "shown", "property": "data", "value": shown}]}
    return client.post("/_dash-update-component", json=payload)


def text_of(response) -> str:
    """The page as compact JSON text (Dash escapes "/" in what it sends)."""
    assert response.status_code == 200, response.status_code
    return json.dumps(response.get_json(), separators=(",", ":"))


def test_every_page_renders_its_content(results):
    client = create_app(results).server.test_client()
    experiments = text_of(page(client, "/"))
    assert "finished_run" in experiments and "live_run" in experiments and '"running"' in experiments
    experiment = text_of(page(client, "/runs/live_run"))
    for graph in ("best-vs-time", "best-vs-trials", "learning-curves", "parallel-coordinates", "importance",
                  "leaderboard"):
        assert f'"id":"{graph}"' in experiment, graph
    for part in ("trial05", "hp_block_dropout_3", "stopped by ASHA at its rung", "log10 learning_rate"):
        assert part in experiment, part
    models = text_of(page(client, "/runs/finished_run/models"))
    for part in ('"id":"models"', '"id":"per-class"', '"id":"confusion-matrix"', "/files/finished_run/roc.png",
                 "/files/finished_run/model.zip", "/files/finished_run/model_card.md", "seed 001, weighted ensemble",
                 '"parameters"', '"40,119"', '"1,290,119"'):  # the ensemble's: its two members' in all
        assert part in models, part
    compare = text_of(page(client, "/compare", "?run=finished_run&run=live_run"))
    assert '"id":"compare-trials"' in compare and '"id":"compare-time"' in compare
    assert "could not be drawn" not in compare


def test_a_run_shows_its_rejected_draws_and_epoch_budget(results):
    write_run_info(results / "live_run", epoch_budget=100,
                   infeasible_draws={"rejected": 7, "by_reason": {"pooling": 3, "valid_padding": 4}})
    experiment = text_of(page(create_app(results).server.test_client(), "/runs/live_run"))
    assert "7 rejected without a trial (pooling 3, valid_padding 4)" in experiment
    assert "18 of 100 epochs trained" in experiment  # still running: the epochs recorded so far (3x4 + 3x2)


def test_broken_results_show_a_message_instead_of_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No runs in" in text_of(page(create_app(empty).server.test_client(), "/"))
    assert "does not exist" in text_of(page(create_app(tmp_path / "missing").server.test_client(), "/"))

    results = tmp_path / "results"
    write_run_info(results / "just_started", name="just_started", status="running", metric=METRIC, mode="max")
    write_run_info(results / "no_epoch_yet", name="no_epoch_yet", status="running", metric=METRIC, mode="max")
    store = RunStore(results / "no_epoch_yet", Objective.of(METRIC), max_epochs=4)
    store.trial_started("first", {"conv_blocks": 2})
    store.trial_started("second", {"conv_blocks": 3})
    store.flush(force=True)  # two trials running, none has finished an epoch
    make_run(results, "torn_trials")
    (results / "torn_trials" / "trials.parquet").write_bytes(b"PAR1 half of a file")
    make_run(results, "torn_run_json")
    (results / "torn_run_json" / "run.json").write_text('{"name": "torn_run_json", "sta')
    add_models(make_run(results, "torn_metrics", running=0))
    (results / "torn_metrics" / "ensemble" / "metrics.json").write_text("[1, 2")
    client = create_app(results).server.test_client()

    assert "No trial has reported yet" in text_of(page(client, "/runs/just_started"))
    no_epoch = text_of(page(client, "/runs/no_epoch_yet"))
    assert "no epoch recorded yet" in no_epoch and "second" in no_epoch and "could not be" not in no_epoch
    assert "trials.parquet could not be read" in text_of(page(client, "/runs/torn_trials"))
    torn_json = text_of(page(client, "/runs/torn_run_json"))
    assert "run.json could not be read" in torn_json and '"id":"leaderboard"' in torn_json
    assert "metrics.json could not be read" in text_of(page(client, "/runs/torn_metrics/models"))
    assert "No run named" in text_of(page(client, "/runs/nope"))
    assert "No page at" in text_of(page(client, "/what/ever"))
    assert "could not be read" in text_of(page(client, "/"))  # the list names the broken runs too
    assert "could not be drawn" not in text_of(page(client, "/compare"))


def test_refresh_redraws_only_when_the_run_changed(results):
    client = create_app(results).server.test_client()
    first = page(client, "/runs/live_run").get_json()["response"]["shown"]["data"]
    assert page(client, "/runs/live_run", shown=first).status_code == 204  # unchanged: nothing sent
    store = RunStore(results / "live_run", Objective.of(METRIC), max_epochs=4)
    store.trial_started("fresh", {"conv_blocks": 2})
    store.epoch("fresh", 1, metrics(0.9), 1.0, {})
    store.flush(force=True)
    assert "fresh" in text_of(page(client, "/runs/live_run", shown=first))


def test_downloads_serve_only_files_of_existing_runs(results):
    client = create_app(results).server.test_client()
    archive = client.get("/files/finished_run/model.zip")
    assert archive.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(archive.data)).namelist())
    assert {"finished_run_model/model.keras", "finished_run_model/saved_model/saved_model.pb"} <= names
    assert client.get("/files/finished_run/model_card.md").data == b"# model card\n"
    assert client.get("/files/finished_run/roc.png").status_code == 200
    (results.parent / "secret.txt").write_text("TOP SECRET")
    for path in ("/files/../model_card.md", "/files/%2E%2E/roc.png", "/files/finished_run/run.json",
                 "/files/finished_run/..", "/files/live_run/model.zip", "/files/nope/model.zip"):
        assert client.get(path).status_code == 404, path
    for path in ("/files/..%2F..%2Fsecret.txt/model_card.md", "/files/finished_run/..%2F..%2F..%2Fsecret.txt"):
        assert "TOP SECRET" not in client.get(path).get_data(as_text=True), path  # slashes never reach the route


def test_downloads_never_follow_symlinks_out_of_the_results(results, tmp_path):
    client = create_app(results).server.test_client()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    run_dir = results / "finished_run"
    (run_dir / "ensemble" / "report.md").symlink_to(secret)
    (run_dir / "model" / "leak.txt").symlink_to(secret)
    (run_dir / "model" / "card_link.md").symlink_to(run_dir / "model" / "model_card.md")  # inside: kept
    assert client.get("/files/finished_run/report.md").status_code == 404
    archive = zipfile.ZipFile(io.BytesIO(client.get("/files/finished_run/model.zip").data))
    assert "finished_run_model/leak.txt" not in archive.namelist()
    assert archive.read("finished_run_model/card_link.md") == b"# model card\n"
    elsewhere = tmp_path / "elsewhere"  # a run folder that is itself a link out of the results
    add_models(make_run(elsewhere, "outside", running=0))
    (results / "linked").symlink_to(elsewhere / "outside")
    for artifact in ("model.zip", "model_card.md", "roc.png"):
        assert client.get(f"/files/linked/{artifact}").status_code == 404, artifact


def test_read_only_loopback_and_no_external_assets(results):
    app = create_app(results)
    client = app.server.test_client()
    html = client.get("/").get_data(as_text=True)
    assert "<script" in html and "http://" not in html and "https://" not in html and 'src="//' not in html
    assert app.config.serve_locally
    # Nothing a page can do changes files: its only callbacks draw pages, a page of the leaderboard, and set the
    # compare selection.
    outputs = {c["output"] for c in client.get("/_dash-dependencies").get_json()}
    assert outputs == {"..page.children...shown.data..", "url.search",
                       "..leaderboard.data...leaderboard.page_count...leaderboard.page_current.."}
    assert {r.rule for r in app.server.url_map.iter_rules() if "POST" in r.methods} == {"/_dash-update-component"}
    assert serve.__defaults__[:2] == ("127.0.0.1", 8050)  # host, port


def test_dashboard_imports_neither_ray_nor_tensorflow(results):
    code = ("import sys; from automl.dashboard import create_app; c = create_app(sys.argv[1]).server.test_client();"
            "[c.get(p) for p in ('/', '/files/finished_run/model.zip')];"
            "print(sorted(m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(results)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_figures_mark_pruned_trials_and_say_when_wall_time_is_missing(results):
    trials, epochs = RunLayout(results / "live_run").read_trials(), RunLayout(results / "live_run").read_epochs()
    fig = figures.learning_curves(trials, epochs, METRIC, "asha")
    stopped = next(t for t in fig.data if t.name == "stopped by ASHA at its rung")
    assert stopped.marker.symbol == "x" and set(stopped.x) == {2} and set(stopped.text) == {"trial01", "trial03"}
    assert {t.name for t in fig.data} >= {"completed (3)", "pruned (2)", "running (1)"}

    by_time = figures.best_by_time(epochs, Objective.of(METRIC))
    assert by_time["seconds"].iloc[0] == 0 and by_time["best"].is_monotonic_increasing
    assert figures.best_by_time(epochs.drop(columns="timestamp"), Objective.of(METRIC)) is None
    shuffled = trials.sample(frac=1, random_state=1)
    in_start_order = figures.best_by_trial(shuffled, Objective.of(METRIC))["trial_id"]
    assert list(in_start_order) == list(trials.sort_values("started_at")["trial_id"])
    in_file_order = figures.best_by_trial(shuffled.drop(columns="started_at"), Objective.of(METRIC))["trial_id"]
    assert list(in_file_order) == list(shuffled["trial_id"])


def test_importance_handles_conditional_and_too_few_trials(results):
    trials = RunLayout(results / "finished_run").read_trials()
    importances, notes = param_importances(trials, Objective.of(METRIC))
    assert set(importances) == {"conv_blocks", "learning_rate", "optimizer", "batch_norm", "block_dropout_3"}
    assert any("block_dropout_3" in n and "conditional" in n for n in notes)
    assert param_importances(trials.head(1), Objective.of(METRIC)) == ({}, [
        "needs at least 2 completed or pruned trials with a value; this run has 1"])


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")


def headless_chromium(tmp_path):
    """Debian's Chromium under WebDriver, headless, with its own profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def waiter(driver):
    """``wait_for(condition, what, timeout_s)``: poll until true, or fail naming what and where."""
    def wait_for(condition, what, timeout_s=30.0):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what} on {driver.current_url}"
            time.sleep(0.2)

    return wait_for


@needs_chromium
def test_pages_in_a_real_browser_with_live_refresh(results, tmp_path):
    from selenium.webdriver.common.by import By
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(results).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    driver = headless_chromium(tmp_path)
    wait_for = waiter(driver)

    def graphs_drawn(count):
        return lambda: len(driver.find_elements(By.CSS_SELECTOR, ".dash-graph .main-svg")) >= count

    def leaderboard_cells(column):  # in one script: a refresh may replace the cells between two WebDriver calls
        return driver.execute_script("return [...document.querySelectorAll("
                                     f"'#leaderboard td[data-dash-column={column}]')].map(td => td.innerText)")

    def leaderboard_ids():
        return set(leaderboard_cells("trial_id"))

    try:
        driver.get(base + "/")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#experiments tbody tr")) == 2, "the runs table")

        driver.get(base + "/runs/live_run")
        wait_for(lambda: len(leaderboard_ids()) == 6, "6 leaderboard rows")
        wait_for(graphs_drawn(5), "the experiment's plots")
        assert not driver.find_element(By.ID, "family-filter").is_displayed()  # this run's space has no family
        driver.execute_script("window.stillThisPage = true")
        store = RunStore(results / "live_run", Objective.of(METRIC), max_epochs=4)  # a search going on
        store.trial_started("newtrial", {"conv_blocks": 4, "learning_rate": 1e-3, "optimizer": "adam"})
        store.epoch("newtrial", 1, metrics(0.95), 1.0, {"hostname": "h"})
        store.flush(force=True)
        wait_for(lambda: "newtrial" in leaderboard_ids(), "the new trial without a reload", timeout_s=20)
        assert driver.execute_script("return window.stillThisPage") is True

        driver.get(base + "/runs/finished_run/models")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#per-class tbody tr"), "the per-class table")
        wait_for(graphs_drawn(2), "the model plots")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#models tbody tr")) == 3 + 1  # 2 members, ensemble, published
        download = driver.find_element(By.ID, "download-model").get_attribute("href")
        assert download == base + "/files/finished_run/model.zip"

        driver.get(base + "/compare?run=finished_run&run=live_run")
        wait_for(graphs_drawn(4), "the comparison plots")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#compare tbody tr")) == 2

        # Picked on the last of 3 pages (50 rows each), a family of 2 pages shows its first page, and says so.
        make_run(results, "mixed", trials=120, epochs=2, running=0, families=("cnn", "cnn", "resnet"))
        driver.get(base + "/runs/mixed")
        wait_for(lambda: len(leaderboard_ids()) == 50, "50 leaderboard rows")
        driver.find_element(By.CSS_SELECTOR, "#leaderboard button.last-page").click()
        wait_for(lambda: len(leaderboard_ids()) == 20, "the last page's 20 rows")
        driver.find_element(By.ID, "leaderboard-family").click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "[role=option]"), "the family options")
        next(o for o in driver.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text == "cnn").click()
        wait_for(lambda: leaderboard_cells("hp_family") == ["cnn"] * 50, "the first page of the cnn trials")
        page_shown = driver.execute_script("return document.querySelector('#leaderboard input.current-page')"
                                           ".placeholder + ' / ' + document.querySelector('#leaderboard .last-page')"
                                           ".innerText")
        assert page_shown == "1 / 2", page_shown

        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(base) for url in loaded), [u for u in loaded if not u.startswith(base)]
    finally:
        driver.quit()
        server.shutdown()


def leaderboard(client, name: str, page_current: int = 0, sort_by=(), filter_query: str = "",
                family: str | None = None, changed: str = "page_current", with_page: bool = False) -> tuple:
    """What the table asks for when the user pages, sorts, filters or picks a family (``changed``: the table's
    property, or ``family``): one page of rows, the page count, and with ``with_page`` the page it shows."""
    payload = {"output": "..leaderboard.data...leaderboard.page_count...leaderboard.page_current..",
               "outputs": [{"id": "leaderboard", "property": p} for p in ("data", "page_count", "page_current")],
               "inputs": [{"id": "leaderboard", "property": "page_current", "value": page_current},
                          {"id": "leaderboard", "property": "sort_by", "value": list(sort_by)},
                          {"id": "leaderboard", "property": "filter_query", "value": filter_query},
                          {"id": "leaderboard-family", "property": "value", "value": family}],
               "changedPropIds": ["leaderboard-family.value" if changed == "family" else f"leaderboard.{changed}"],
               "state": [{"id": "url", "property": "pathname", "value": f"/runs/{name}"}]}
    response = client.post("/_dash-update-component", json=payload).get_json()["response"]["leaderboard"]
    shown = (response["data"], response["page_count"])
    return (*shown, response["page_current"]) if with_page else shown


def test_leaderboard_pages_sorts_and_filters_on_the_server(tmp_path):
    results = tmp_path / "results"
    make_run(results, "big", trials=120, epochs=2, running=0)
    client = create_app(results).server.test_client()
    experiment = text_of(page(client, "/runs/big"))
    assert experiment.count('"trial_id":"trial') == 50  # only the first page travels with the page

    rows, pages = leaderboard(client, "big")
    assert pages == 3 and len(rows) == 50 and [r["rank"] for r in rows] == list(range(1, 51))
    assert [r[f"best_{METRIC}"] for r in rows] == sorted((r[f"best_{METRIC}"] for r in rows), reverse=True)
    rows, _ = leaderboard(client, "big", page_current=2)
    assert [r["rank"] for r in rows] == list(range(101, 121))
    rows, _ = leaderboard(client, "big", sort_by=[{"column_id": "hp_learning_rate", "direction": "asc"}])
    assert rows[0]["hp_learning_rate"] == min(r["hp_learning_rate"] for r in rows)
    assert rows[0]["trial_id"] == "trial119"  # the smallest of all 120, not of the first page
    rows, pages = leaderboard(client, "big", filter_query="{hp_optimizer} contains sgd && {hp_conv_blocks} >= 3")
    assert pages == 1 and rows and all(r["hp_optimizer"] == "sgd" and r["hp_conv_blocks"] >= 3 for r in rows)
    assert len(rows) == sum(1 for i in range(120) if i % 2 and 2 + i % 3 >= 3)
    rows, _ = leaderboard(client, "big", filter_query='{status} = "completed" && {nope} > 1')  # unknown: ignored
    assert len(rows) == 50


def component(tree, component_id: str) -> dict:
    """The props of the component with ``component_id`` in a page as Dash sends it."""
    if isinstance(tree, dict):
        if tree.get("props", {}).get("id") == component_id:
            return tree["props"]
        tree = list(tree.values())
    if isinstance(tree, list):
        for node in tree:
            if (found := component(node, component_id)) is not None:
                return found
    return None


def test_leaderboard_shows_compute_and_filters_by_family_on_the_server(tmp_path):
    results = tmp_path / "results"
    make_run(results, "mixed", trials=120, epochs=2, running=0, families=("cnn", "cnn", "resnet"))
    client = create_app(results).server.test_client()
    experiment = page(client, "/runs/mixed").get_json()["response"]["page"]["children"]
    columns = {c["id"]: c for c in component(experiment, "leaderboard")["columns"]}
    assert columns["parameters"]["name"] == ["compute", "parameters"] and columns["parameters"]["type"] == "numeric"
    assert columns["seconds_per_epoch"]["name"] == ["compute", "s/epoch"]
    assert columns["wall_time_s"]["name"] == ["compute", "trial seconds"]
    assert columns["parameters"]["format"]["specifier"] == ".3~s"  # 1.2M, 85.3k: the value stays a number
    family_filter = component(experiment, "family-filter")
    assert family_filter["style"] is None  # shown: the run has families
    assert component(family_filter, "leaderboard-family")["options"] == ["cnn", "resnet"]
    assert "40,119 parameters, 1.5 s/epoch, 3 s in all" in json.dumps(experiment)  # the best trial's card

    rows, pages = leaderboard(client, "mixed", family="resnet")
    assert pages == 1 and len(rows) == 40 and {r["hp_family"] for r in rows} == {"resnet"}
    assert rows[0]["seconds_per_epoch"] == 1.5 and rows[0]["parameters"] == 10_000 * (2 + 119 % 3) + 119
    rows, pages = leaderboard(client, "mixed", family="cnn")
    assert pages == 2 and len(rows) == 50 and {r["hp_family"] for r in rows} == {"cnn"}

    assert rows[0]["rank"] == 2  # ranks among all trials: the best (trial119) is a resnet
    rows, _ = leaderboard(client, "mixed", page_current=1, family="cnn")
    assert len(rows) == 30 and {r["hp_family"] for r in rows} == {"cnn"}
    # With the table's own filter and sort, still on the whole table.
    rows, pages = leaderboard(client, "mixed", family="cnn", filter_query="{parameters} < 30000",
                              sort_by=[{"column_id": "parameters", "direction": "desc"}])
    expected = sorted((10_000 * (2 + i % 3) + i for i in range(120) if i % 3 != 2 and 2 + i % 3 < 3), reverse=True)
    assert pages == 1 and [r["parameters"] for r in rows] == expected
    rows, pages = leaderboard(client, "mixed", family=None)
    assert pages == 3 and len(rows) == 50

    # Picking a family (or a filter, or a sort) while on page 3 of all trials shows the first page of the new rows,
    # and the table's page counter follows; paging keeps the page asked for, or the last one there is.
    rows, pages, shown = leaderboard(client, "mixed", page_current=2, family="resnet", changed="family", with_page=True)
    assert (pages, shown) == (1, 0) and rows == leaderboard(client, "mixed", family="resnet")[0]
    sgd = "{hp_optimizer} contains sgd"
    rows, pages, shown = leaderboard(client, "mixed", page_current=1, filter_query=sgd, changed="filter_query",
                                     with_page=True)
    assert (pages, shown) == (2, 0) and rows == leaderboard(client, "mixed", filter_query=sgd)[0] and len(rows) == 50
    rows, pages, shown = leaderboard(client, "mixed", page_current=1, family="cnn", with_page=True)
    assert (pages, shown) == (2, 1) and len(rows) == 30
    assert leaderboard(client, "mixed", page_current=7, family="cnn", with_page=True)[1:] == (2, 1)


def test_a_run_recorded_before_costs_and_families_still_shows(tmp_path):
    """trials.parquet and epochs.parquet as earlier searches wrote them: no cost columns, no hp_family."""
    results = tmp_path / "results"
    run_dir = results / "old"
    write_run_info(run_dir, name="old", status="finished", engine="ray", searcher="optuna", scheduler="asha",
                   metric=METRIC, mode="max", num_samples=3, max_epochs=2, started=utc_now())
    pd.DataFrame([{"trial_id": f"t{i}", "status": "completed", "epochs": 2, "best_epoch": 2, "hp_conv_blocks": i,
                   f"best_{METRIC}": 0.1 * i, "wall_time_s": 3.0, "started_at": 1.7e9 + i} for i in range(3)]
                 ).to_parquet(run_dir / "trials.parquet", index=False)
    pd.DataFrame([{"trial_id": f"t{i}", "epoch": e, "elapsed_s": 1.5 * e, METRIC: 0.05 * i * e}
                  for i in range(3) for e in (1, 2)]).to_parquet(run_dir / "epochs.parquet", index=False)
    client = create_app(results).server.test_client()
    experiment = page(client, "/runs/old").get_json()["response"]["page"]["children"]
    columns = {c["id"] for c in component(experiment, "leaderboard")["columns"]}
    assert "wall_time_s" in columns and not {"parameters", "seconds_per_epoch", "samples_seen"} & columns
    assert component(experiment, "family-filter")["style"] == {"display": "none"}
    assert "could not be" not in json.dumps(experiment)
    rows, pages = leaderboard(client, "old", family="cnn")  # a family the run cannot have: nothing filtered
    assert pages == 1 and [r["trial_id"] for r in rows] == ["t2", "t1", "t0"]


def test_new_columns_of_the_store_appear_in_the_leaderboard_by_themselves(tmp_path):
    results = tmp_path / "results"
    run_dir = make_run(results, "wide", trials=3, running=0)
    store = RunStore(run_dir, Objective.of(METRIC), max_epochs=4)
    store.trial_started("extra", {"conv_blocks": 2})
    store.epoch("extra", 1, metrics(0.5), 1.0, {"model_family": "cnn", "seconds_per_epoch": 1.5})
    store.close()
    experiment = text_of(page(create_app(results).server.test_client(), "/runs/wide"))
    for column in ('"id":"model_family"', '"id":"seconds_per_epoch"', '"id":"best_val_auc"', '"id":"hp_optimizer"'):
        assert column in experiment, column
    assert '"id":"last_val_auc"' not in experiment and '"id":"node_ip"' not in experiment


def test_figures_of_a_large_run_draw_a_sample_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "MAX_CURVES", 30)
    monkeypatch.setattr(figures, "MAX_LINES", 40)
    monkeypatch.setattr(figures, "MAX_DOTS", 50)
    results = tmp_path / "results"
    make_run(results, "large", trials=150, epochs=3, running=0)
    experiment = page(create_app(results).server.test_client(), "/runs/large").get_json()["response"]["page"]

    def graph(graph_id):
        found = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("props", {}).get("id") == graph_id:
                    found.append(node["props"]["figure"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(experiment)
        return found[0]

    curves = graph("learning-curves")
    drawn = {t for trace in curves["data"] for t in trace.get("text") or [] if t}
    assert len(drawn) == 30 and "trial148" in drawn  # the best trial is always drawn
    assert "30 of 150 trials drawn" in curves["layout"]["title"]["text"]
    lines = graph("parallel-coordinates")
    assert len(values(lines["data"][0]["dimensions"][0]["values"])) == 40
    assert "40 of 150" in lines["layout"]["title"]["text"]
    dots = graph("best-vs-trials")
    shown = sum(len(values(t["x"])) for t in dots["data"] if t["mode"] == "markers")
    # Every third trial, and every trial that set a new best (in this generated run, many do).
    assert shown < 150 and any("1 in 3" in t["name"] for t in dots["data"] if t["mode"] == "markers")
    # The best-so-far line keeps only the points where it changes: the same step line.
    trials = RunLayout(results / "large").read_trials()
    full = figures.best_by_trial(trials, Objective.of(METRIC))
    line = next(t for t in dots["data"] if t["mode"] == "lines")
    assert len(values(line["x"])) < len(full) and values(line["y"])[-1] == full["best"].iloc[-1]


def values(data) -> list:
    """A figure's array as plotly sends it: a list, or numbers packed as base64 (``{"dtype", "bdata"}``)."""
    if isinstance(data, dict):
        return list(np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]))
    return list(data)
