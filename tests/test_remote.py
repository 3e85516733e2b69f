"""Run folders at a URI (automl/remote.py), against a real S3-compatible server on 127.0.0.1 (moto's)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from automl import remote
from automl.cli import main
from automl.errors import UserError
from automl.layout import RunLayout
from automl.lock import RunLockedError, holder_record
from automl.objective import Objective
from automl.remote import LEASE_NAME, Lease, Location, Mirror, checked_out, working_copy
from automl.store import FINISHED, RunStore
from tests.test_dashboard import METRIC, add_models, headless_chromium, make_run, metrics, needs_chromium, waiter
from tests.test_search import TINY_SEARCH


def _tree(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != remote.STATE_NAME}


def test_a_uri_pyarrow_cannot_open_is_one_line():
    with pytest.raises(UserError, match=r"^--results nope://x/y: cannot open it \(.*\); check the URI"):
        Location.parse("nope://x/y", "--results")


def test_a_bucket_alone_is_refused(bucket):
    with pytest.raises(UserError, match="give a bucket and, usually, a prefix"):
        Location.parse("s3://", "--results")


def test_push_then_pull_copies_changes_and_deletions_only(bucket, tmp_path):
    location = Location.parse(bucket, "--results").join("run")
    source = tmp_path / "source"
    (source / "trials-parts").mkdir(parents=True)
    (source / "run.json").write_text('{"status": "running"}')
    (source / "trials-parts" / "0000000001-0000000001.parquet").write_bytes(b"part")
    (source / "ray").mkdir()
    (source / "ray" / "experiment.json").write_text("Tune's own")
    writer = Mirror(source, location, remote.run_folder_skip)
    assert writer.push() == 2
    assert writer.push() == 0  # nothing changed: nothing uploaded
    assert sorted(location.files()) == ["run.json", "trials-parts/0000000001-0000000001.parquet"]

    (source / "trials-parts" / "0000000001-0000000001.parquet").unlink()  # compacted away
    (source / "trials.parquet").write_bytes(b"table")
    (source / "run.json").write_text('{"status": "finished"}')
    assert writer.push() == 2
    assert sorted(location.files()) == ["run.json", "trials.parquet"]

    copy = tmp_path / "copy"
    (copy / "stale").mkdir(parents=True)
    (copy / "stale" / "left.txt").write_text("not in the bucket")
    reader = Mirror(copy, location, remote.run_folder_skip)
    assert reader.pull() == 2
    assert _tree(copy) == {"run.json": b'{"status": "finished"}', "trials.parquet": b"table"}
    assert Mirror(copy, location, remote.run_folder_skip).pull() == 0  # its state remembered: nothing again


def test_a_sqlite_file_is_pushed_as_a_consistent_snapshot(bucket, tmp_path):
    location = Location.parse(bucket, "--results").join("run")
    database = tmp_path / "run" / "optuna.db"
    database.parent.mkdir()
    writer = sqlite3.connect(database)
    writer.execute("create table trials (n integer)")
    writer.executemany("insert into trials values (?)", [(n,) for n in range(100)])
    writer.commit()
    writer.execute("insert into trials values (100)")  # a transaction still open: not in the snapshot
    Mirror(database.parent, location).push()
    writer.close()
    copy = tmp_path / "copy"
    Mirror(copy, location).pull()
    with sqlite3.connect(copy / "optuna.db") as reader:
        assert reader.execute("select count(*) from trials").fetchone() == (100,)


def test_two_writers_racing_for_one_run_exactly_one_wins(bucket):
    location = Location.parse(bucket, "--results").join("run")
    leases = [Lease(location, f"automl search {n}") for n in range(2)]
    start, outcomes = threading.Barrier(2), {}

    def take(lease: Lease) -> None:
        start.wait()
        try:
            lease.acquire()
            outcomes[lease.command] = "held"
        except RunLockedError as exc:
            outcomes[lease.command] = str(exc)

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v == "held" for v in outcomes.values()) == [False, True], outcomes
    refused = next(v for v in outcomes.values() if v != "held")
    assert refused.startswith(f"{location.display} is in use by pid ")
    for lease in leases:
        lease.release()
    assert location.read_bytes(LEASE_NAME) is None  # the holder removed its lease


def test_a_lease_whose_holder_died_on_this_host_is_taken_over_at_once(bucket):
    location = Location.parse(bucket, "--results").join("run")
    dead = _pid_of_finished_process()
    location.write_bytes(LEASE_NAME, json.dumps(holder_record("automl search") | {"pid": dead, "nonce": "x"}).encode())
    lease = Lease(location, "automl search --resume")
    lease.acquire()
    assert json.loads(location.read_bytes(LEASE_NAME))["nonce"] == lease.nonce
    lease.release()


def test_a_live_lease_of_another_host_is_refused(bucket):
    location = Location.parse(bucket, "--results").join("run")
    record = holder_record("automl search") | {"host": "elsewhere", "nonce": "x", "ttl_s": 60}
    location.write_bytes(LEASE_NAME, json.dumps(record).encode())
    with pytest.raises(RunLockedError, match=r"in use by pid \d+ on host elsewhere \(automl search"):
        Lease(location, "automl search").acquire()


def test_checked_out_works_in_a_working_copy_outside_the_working_folder(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    location = Location.parse(bucket, "--results").join("quick")
    with checked_out(location, "automl search quick") as local:
        assert local == working_copy(location, "run") and tmp_path / "cache" in local.parents
        assert location.read_bytes(LEASE_NAME) is not None
        (local / "run.json").write_text("{}")
    assert sorted(location.files()) == ["run.json"]  # pushed at the end; the lease gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing in the working folder


def _pid_of_finished_process() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# The commands with --results s3://...: the whole pipeline, a kill and a resume, two writers, the dashboard.

def _view(location: Location, folder) -> RunLayout:
    """What the bucket holds of a run, pulled into ``folder``."""
    Mirror(folder, location).pull()
    return RunLayout(folder)


def test_run_predict_evaluate_and_export_with_the_run_folder_in_a_bucket(tiny_ham, tmp_path, bucket, monkeypatch,
                                                                         capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SEARCH + "training: {epochs: 2, early_stopping_patience: 1}\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = main(["run", str(spec), "--data", str(tiny_ham), "--name", "e2e", "--results", bucket,
                 "--top-k", "1", "--seeds", "1", "--num-samples", "2"])
    assert code == 0, capsys.readouterr().err
    assert f"run folder: {bucket}/e2e" in capsys.readouterr().out
    location = Location.parse(bucket, "--results").join("e2e")
    held = location.files()
    assert {"run.json", "spec.yaml", "trials.parquet", "epochs.parquet", "optuna.db", "retrain/members.parquet",
            "ensemble/ensemble.json", "ensemble/report.md", "model/model_card.json",
            "model/saved_model/saved_model.pb"} <= set(held)
    assert any(k.startswith("ray/") for k in held)  # Tune's experiment, written there by Tune itself
    assert LEASE_NAME not in held and ".lock" not in held
    run = _view(location, tmp_path / "view")
    assert run.read_info()["status"] == "finished" and len(run.read_trials()) == 2 and len(run.read_members()) == 1

    model = f"{bucket}/e2e/model"
    assert main(["predict", model, str(tiny_ham / "HAM10000_images"), "--out", str(tmp_path / "preds.csv")]) == 0
    assert (pd.read_csv(tmp_path / "preds.csv", keep_default_na=False)["error"] == "").all()
    assert main(["evaluate", model, "--data", str(tiny_ham), "--name", "tiny"]) == 0
    assert "model/evaluations/tiny/metrics.json" in location.files()
    card = json.loads(location.join("model").read_bytes("model_card.json"))
    assert [e["name"] for e in card["external_evaluations"]] == ["tiny"]  # the card in the bucket names it
    assert main(["export", "e2e", "--results", bucket, "--out", f"{bucket}/shipped/v1"]) == 0
    shipped = Location.parse(bucket, "--results").join("shipped", "v1").files()
    assert {"model.keras", "model_card.json", "saved_model/saved_model.pb"} <= set(shipped)
    assert main(["export", "e2e", "--results", bucket, "--out", f"{bucket}/e2e/spec.yaml"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert list(work.iterdir()) == []  # the working folder holds no part of any of it


def test_a_search_killed_outright_resumes_from_the_bucket_alone(tiny_ham, tmp_path, bucket):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SEARCH)
    location = Location.parse(bucket, "--results").join("killed")
    command = [sys.executable, "-m", "automl", "search", str(spec), "--data", str(tiny_ham), "--name", "killed",
               "--results", bucket, "--num-samples", "6", "--max-concurrent", "1"]  # Optuna: its study resumes too
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, finished_before = time.monotonic() + 240, set()
    try:
        while time.monotonic() < deadline and not finished_before:
            time.sleep(2)
            if "trials.parquet" in location.files():
                trials = _view(location, tmp_path / "before").read_trials()
                finished_before = set(trials.loc[trials["status"].isin(FINISHED), "trial_id"])
            assert driver.poll() is None, "search ended before it could be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert finished_before, "no trial finished within 240 s"
    shutil.rmtree(working_copy(location, "run"))  # as if resumed on another machine: the bucket is all there is

    assert main(["search", str(spec), "--data", str(tiny_ham), "--name", "killed", "--results", bucket,
                 "--resume"]) == 0  # the dead driver's lease taken over at once (same host, process gone)
    after = _view(location, tmp_path / "after").read_trials()
    assert finished_before <= set(after.loc[after["status"].isin(FINISHED), "trial_id"])  # no finished trial lost
    assert after["status"].isin(FINISHED).all()


def test_two_searches_of_one_name_in_one_bucket_exactly_one_is_refused(tiny_ham, tmp_path, bucket):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SEARCH)
    command = [sys.executable, "-m", "automl", "search", str(spec), "--data", str(tiny_ham), "--name", "twice",
               "--results", bucket, "--num-samples", "1", "--max-epochs", "1"]
    searches = []
    for n in range(2):  # each with its own cache, so that their working copies differ as on two machines
        env = os.environ | {"AUTOML_CACHE_DIR": str(tmp_path / f"cache{n}")}
        searches.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outcomes = [search.communicate(timeout=300) + (search.returncode,) for search in searches]
    codes = sorted(code for _, _, code in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for _, err, code in outcomes if code == 2)
    assert "is in use by pid" in refused and "Traceback" not in refused


@needs_chromium
def test_the_dashboard_lists_and_draws_runs_in_a_bucket_and_follows_them(tmp_path, bucket):
    from selenium.webdriver.common.by import By
    from werkzeug.serving import make_server

    from automl.dashboard import create_app

    local = tmp_path / "made"
    add_models(make_run(local, "finished_run", running=0))
    make_run(local, "live_run", running=1)
    results = Location.parse(bucket, "--results")
    for name in ("finished_run", "live_run"):
        Mirror(local / name, results.join(name)).push()
    stop = threading.Event()
    view = remote.kept_pulled(results, every_s=1.0, stop=stop)
    server = make_server("127.0.0.1", 0, create_app(view, results.display).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    driver = headless_chromium(tmp_path)
    wait_for = waiter(driver)
    try:
        driver.get(base + "/")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#experiments tbody tr")) == 2, "the runs table")
        assert f"results: {results.display}" in driver.find_element(By.CSS_SELECTOR, ".where").text
        driver.get(base + "/runs/live_run")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#leaderboard td[data-dash-column=trial_id]"))
                 == 6, "6 leaderboard rows")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".dash-graph .main-svg")) >= 5, "the plots")
        with checked_out(results.join("live_run"), "automl search live_run --resume") as copy:  # the search goes on
            store = RunStore(copy, Objective.of(METRIC), max_epochs=4)
            store.trial_started("newtrial", {"conv_blocks": 4, "learning_rate": 1e-3, "optimizer": "adam"})
            store.epoch("newtrial", 1, metrics(0.95), 1.0, {"hostname": "h"})
            store.close()
        wait_for(lambda: "newtrial" in driver.execute_script(
            "return [...document.querySelectorAll('#leaderboard td[data-dash-column=trial_id]')]"
            ".map(td => td.innerText)"), "the new trial, from the bucket, without a reload", timeout_s=30)
        driver.get(base + "/runs/finished_run/models")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#per-class tbody tr"), "the per-class table")
    finally:
        driver.quit()
        server.shutdown()
        stop.set()
