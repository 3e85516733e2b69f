"""Scale: the results store, Ray Tune's driver and the dashboard with thousands of trials, and a killed driver.

    python benchmarks/scale.py                                # every part not written yet (about 40 min on 2 cores)
    python benchmarks/scale.py --parts store,dashboard        # the cheap parts (a few minutes)
    python benchmarks/scale.py --parts driver --driver-trials 2000 --force

Each part writes ``OUT/scale_<part>.json`` (default ``results/benchmarks/``) as soon as it finishes, and a part
whose file exists is skipped unless ``--force``: an interrupted run picks up where it stopped.

store
    ``RunStore`` alone, no training, fed the events of a simulated cluster: ``--workers`` (500) workers, each
    reporting an epoch every ``--report-every`` (3) seconds of a simulated clock, trials of 20 epochs started as
    workers free up (staggered, so that trials end evenly over time). For 100, 1,000 and 10,000 trials: the wall
    milliseconds per epoch report, per finished trial and per started trial (each call's own time, flushes it
    triggers included), the slowest report, and the bytes the process wrote per simulated minute (``wchar`` of
    ``/proc/self/io``: every ``write()``, before the page cache). "after" is today's store over the whole run, and
    again over a window of its last ``--window`` reports after reopening the folder (as a resumed driver would).
    "before" is the store as it was (``benchmarks/_old_store.py``): over the whole run up to
    ``--before-full-max`` trials, and beyond that over the same last-reports window of a store pre-loaded to that
    point (the whole run would take hours: its cost per report grows with the run).
dashboard
    The dashboard's pages on a generated run of ``--dashboard-trials`` (10,000) trials x 20 epochs (plus a pruned
    run of the same size for the compare page, and retrained members for the models page), as
    ``dashboard_load.py`` times them: the page's Dash callback through Flask's test client, cold (empty caches)
    and warm (median of later requests), and the response size. "before" runs the same requests against the
    dashboard code of ``--before-commit`` (82646e1, the last commit before the scale work; extracted with
    ``git archive`` to a scratch folder, run in a child process), "after" against the working tree; the run folder
    is the same compacted Parquet pair for both. Also the experiment page's leaderboard paging callback (a page of
    50 rows, sorted and filtered on the server).
driver
    Ray Tune's own cost per trial: ``automl search`` code (``run_search``, embedded local Ray) with a trainable that
    sleeps instead of training (``SleepTrainable`` below, passed through ``run_search(trainable=...)``: the engine's
    public extension point), ``--driver-trials`` trials of 1 or 2 reports (ASHA, grace period 1, max 2 epochs) of
    ``--sleep`` seconds each, ``--driver-concurrent`` at a time (fractional CPUs; each Ray worker is a process of
    about 100 MB). Random search and Optuna TPE separately. A monitor in this process reads the store every 2 s
    and the driver's CPU time from ``/proc`` (user + system of the driver process only: Ray's GCS, raylet and
    workers are other processes, reported apart), and logs every 200 finished trials: trials per second
    started and finished, and the driver's CPU seconds per finished trial, in that window.
resume
    Nothing lost: a ``--resume-trials`` (1,000) trial sleeping random search is killed with SIGKILL (the driver
    process; its Ray dies with it, and anything left in its session is killed after) once half of its trials
    finished; the finished trials in the store then, versus after ``--resume`` finished the search.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (DEFAULT_OUT, LOCAL_RAY, REPO, check_idle, print_table, sample_params, stop_child,  # noqa: E402
                     write_result)

from automl import console  # noqa: E402
from automl.layout import RunLayout  # noqa: E402
from automl.objective import Objective  # noqa: E402

PARTS = ("store", "dashboard", "driver", "resume")
OBJECTIVE = Objective()
EPOCHS = 20


def result_path(out: Path, part: str) -> Path:
    return out / f"scale_{part}.json"


def load_result(out: Path, part: str) -> dict:
    path = result_path(out, part)
    return json.loads(path.read_text()) if path.is_file() else {}


def io_written() -> int:
    """Bytes this process has passed to ``write()`` so far (``wchar``: files, pipes and terminals)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


# --- store -------------------------------------------------------------------------------------------------------


def workload(trials: int, epochs: int, workers: int, every_s: float) -> Iterator[tuple[float, str, int, int]]:
    """``(simulated seconds, event, trial, epoch)`` of a search reporting ``workers / every_s`` epochs a second.

    That rate is kept with fewer trials than workers too (each of the trials then reports more often), so that
    runs of every size are compared at one pace. Events are ``start``, ``epoch`` and ``finish``. Worker ``w`` waits
    ``w % epochs`` rounds before its first trial, so that from then on about ``1/epochs`` of the trials end in every
    round, as in a search that has been running for a while.
    """
    slots = min(workers, trials)
    wait = [w % epochs for w in range(slots)]
    running: list[list[int] | None] = [None] * slots
    started, clock = 0, 0.0
    while started < trials or any(running):
        for w in range(slots):
            clock += every_s / workers
            if running[w] is None:
                if wait[w] or started == trials:
                    wait[w] = max(0, wait[w] - 1)
                    continue
                running[w] = [started, 0]
                started += 1
                yield clock, "start", running[w][0], 0
            running[w][1] += 1
            trial, epoch = running[w]
            yield clock, "epoch", trial, epoch
            if epoch == epochs:
                yield clock, "finish", trial, epoch
                running[w] = None


def epoch_metrics(quality: float, epoch: int, noise: float) -> dict[str, float]:
    value = quality * (1 - math.exp(-epoch / 4)) + noise
    return {"loss": 2 - value, "accuracy": 0.5 + value / 2, "val_balanced_accuracy": value,
            "val_macro_f1": value * 0.85, "val_accuracy": 0.5 + value / 2, "val_auc": 0.7 + value / 3,
            "val_loss": 2.1 - value, "learning_rate": 1e-3}


@contextmanager
def simulated_clock(*modules) -> Iterator[SimpleNamespace]:
    """``time.time()`` and ``time.monotonic()`` of the given store modules follow ``clock.t`` (simulated seconds)."""
    clock = SimpleNamespace(t=0.0, origin=time.time())
    fake = SimpleNamespace(time=lambda: clock.origin + clock.t, monotonic=lambda: clock.t)
    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "time", fake))
        yield clock


def apply_events(store, events, params, qualities, clock, timed: bool) -> dict[str, list[float]]:
    """Feed ``events`` to ``store`` as the engine would; with ``timed``, each call's wall seconds by event kind."""
    rng = random.Random(1)
    times: dict[str, list[float]] = {"start": [], "epoch": [], "finish": []}
    info = {"hostname": "bench", "node_ip": "127.0.0.1", "node_id": "0" * 56}
    for at, kind, trial, epoch in events:
        clock.t = at
        trial_id = f"{trial:05d}_{trial * 7919 % 100000:05d}"
        started = time.perf_counter()
        if kind == "start":
            store.trial_started(trial_id, params[trial])
        elif kind == "epoch":
            store.epoch(trial_id, epoch, epoch_metrics(qualities[trial], epoch, rng.gauss(0, 0.015)),
                        3.0 * epoch, info)
        else:
            store.trial_finished(trial_id, "completed")
        if timed:
            times[kind].append(time.perf_counter() - started)
    return times


class NullStore:
    """Takes the calls and does nothing: the benchmark loop's own cost, subtracted from the stores' CPU time."""

    def trial_started(self, *args) -> None: ...
    def epoch(self, *args) -> None: ...
    def trial_finished(self, *args) -> None: ...


def measure_store(kind: str, trials: int, args, window: int | None) -> dict[str, Any]:
    """One store over a whole simulated run (``window=None``) or over its last ``window`` epoch reports."""
    import tempfile

    import _old_store

    import automl.store
    from automl.store import RunStore

    events = list(workload(trials, EPOCHS, args.workers, args.report_every))
    rng = random.Random(0)
    qualities = [rng.uniform(0.25, 0.65) for _ in range(trials)]
    params = sample_params(REPO / "automl" / "search_spaces" / "ham10000_cnn.yaml", trials)
    epoch_rows = [i for i, e in enumerate(events) if e[1] == "epoch"]
    first = epoch_rows[-window] if window else 0
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp, simulated_clock(automl.store, _old_store) as clock:
        run_dir = Path(tmp)
        if first:  # the run up to the window, written by today's store and compacted: the files both stores read
            preload = RunStore(run_dir, OBJECTIVE, max_epochs=EPOCHS)
            apply_events(preload, events[:first], params, qualities, clock, timed=False)
            preload.close()
        opened = time.perf_counter()
        store = (RunStore if kind == "after" else _old_store.OldRunStore)(run_dir, OBJECTIVE, max_epochs=EPOCHS)
        open_s = time.perf_counter() - opened
        written, cpu = io_written(), time.process_time()
        times = apply_events(store, events[first:], params, qualities, clock, timed=True)
        written, cpu = io_written() - written, time.process_time() - cpu  # the writer thread's too
        closed = time.perf_counter()
        store.close() if kind == "after" else store.flush(force=True)
        close_s = time.perf_counter() - closed
        minutes = (events[-1][0] - events[first][0]) / 60
        baseline = time.process_time()
        apply_events(NullStore(), events[first:], params, qualities, clock, timed=True)
        cpu -= time.process_time() - baseline
    reports = sorted(times["epoch"])
    return {
        "store": kind, "trials": trials, "epochs": EPOCHS, "scope": f"last {window} reports" if window else "whole run",
        "reports": len(reports), "finished": len(times["finish"]), "started": len(times["start"]),
        "ms_per_report": 1000 * sum(reports) / len(reports),
        "cpu_ms_per_report": 1000 * cpu / len(reports),
        "ms_per_report_p99": 1000 * reports[int(0.99 * (len(reports) - 1))], "ms_max_report": 1000 * reports[-1],
        "ms_per_finished_trial": 1000 * statistics.fmean(times["finish"]) if times["finish"] else None,
        "ms_per_started_trial": 1000 * statistics.fmean(times["start"]) if times["start"] else None,
        "simulated_minutes": minutes, "mb_written_per_simulated_minute": written / 2**20 / minutes,
        "cpu_s": cpu, "open_s": open_s, "close_s": close_s,
        "note": "ms_per_report: wall time of the engine's call (flushes it triggers included); cpu_ms_per_report: "
                "CPU of every thread of the process (the writer's too) per report, the benchmark loop's own "
                "cost subtracted; before, the store had no thread and both are the same work",
    }


def store_part(args) -> dict[str, Any]:
    rows = []
    for trials in args.store_sizes:
        console.info(f"store: {trials} trials x {EPOCHS} epochs")
        rows.append(measure_store("after", trials, args, None))
        if trials >= args.window * 2:
            rows.append(measure_store("after", trials, args, args.window))
        before_window = None if trials <= args.before_full_max else args.window
        rows.append(measure_store("before", trials, args, before_window))
        print_store(rows[-3:] if trials >= args.window * 2 else rows[-2:])
    return {"workers": args.workers, "report_every_s": args.report_every, "rows": rows,
            "method": "RunStore fed simulated events; wall time of each call (its flushes included), wchar per "
                      "simulated minute"}


def print_store(rows: list[dict]) -> None:
    print_table("results store: ms per call (wall), CPU ms per report (all threads), MB written per simulated minute",
                ["store", "trials", "scope", "reports", "ms/report", "CPU ms/report", "p99", "max", "ms/finished",
                 "MB/min", "close s"],
                [[r["store"], r["trials"], r["scope"], r["reports"], f"{r['ms_per_report']:.3f}",
                  f"{r['cpu_ms_per_report']:.3f}",
                  f"{r['ms_per_report_p99']:.2f}", f"{r['ms_max_report']:.0f}",
                  "-" if r["ms_per_finished_trial"] is None else f"{r['ms_per_finished_trial']:.2f}",
                  f"{r['mb_written_per_simulated_minute']:.2f}", f"{r['close_s']:.2f}"] for r in rows])


# --- dashboard ---------------------------------------------------------------------------------------------------

# Runs in a child process with PYTHONPATH at the code to time (git HEAD's or the working tree's), so it may use only
# what both have: create_app, the Dash callback request, and _runs._cache.
PAGES_SCRIPT = r"""
import json, statistics, sys, time
import automl
from automl.dashboard import _runs, create_app

results, name, other, repeats, leaderboard = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
client = create_app(results).server.test_client()

def post(outputs, inputs, state=()):
    key = ".." + "...".join(f"{i}.{p}" for i, p in outputs) + ".."
    payload = {"output": key, "outputs": [{"id": i, "property": p} for i, p in outputs],
               "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
               "changedPropIds": [f"{inputs[0][0]}.{inputs[0][1]}"],
               "state": [{"id": i, "property": p, "value": v} for i, p, v in state]}
    response = client.post("/_dash-update-component", json=payload)
    assert response.status_code == 200, response.status_code
    assert "could not be drawn" not in response.get_data(as_text=True)
    return response

def page(path, search=""):
    return post([("page", "children"), ("shown", "data")],
                [("url", "pathname", path), ("url", "search", search), ("refresh", "n_intervals", 0)],
                [("shown", "data", None)])

def timed(request):
    times, response = [], None
    for _ in range(repeats + 1):
        started = time.perf_counter()
        response = request()
        times.append(time.perf_counter() - started)
    return {"cold_ms": round(times[0] * 1000, 1), "warm_median_ms": round(statistics.median(times[1:]) * 1000, 1),
            "response_kb": round(len(response.data) / 1024, 1)}

rows = []
pages = {"experiments": ("/", ""), "experiment": (f"/runs/{name}", ""), "models": (f"/runs/{name}/models", ""),
         "compare": ("/compare", f"?run={name}&run={other}")}
for label, (path, search) in pages.items():
    _runs._cache.clear()
    rows.append({"page": label, "path": path + search, **timed(lambda: page(path, search))})
if leaderboard == "yes":
    page(f"/runs/{name}")
    # The family dropdown's input, where the code has it (all families).
    board = next(c for c in client.get("/_dash-dependencies").get_json()
                 if c["output"].startswith("..leaderboard.data...leaderboard.page_count"))
    outputs = [tuple(o.split(".")) for o in board["output"].strip(".").split("...")]  # with the page shown, if any
    family = [("leaderboard-family", "value", None)] * any(i["id"] == "leaderboard-family" for i in board["inputs"])
    queries = {"leaderboard page 1": (0, [], ""), "leaderboard page 100": (99, [], ""),
               "leaderboard sorted by learning rate": (0, [{"column_id": "hp_learning_rate", "direction": "desc"}], ""),
               "leaderboard filtered": (0, [], "{hp_optimizer} contains adam && {best_val_balanced_accuracy} > 0.4")}
    for label, (number, sort_by, query) in queries.items():
        request = lambda: post(outputs,
                               [("leaderboard", "page_current", number), ("leaderboard", "sort_by", sort_by),
                                ("leaderboard", "filter_query", query), *family],
                               [("url", "pathname", f"/runs/{name}")])
        rows.append({"page": label, "path": f"/runs/{name} (callback)", **timed(request)})
print(json.dumps({"automl": automl.__file__, "rows": rows}))
"""


def dashboard_runs(args) -> tuple[Path, str, str]:
    """Two generated runs of ``--dashboard-trials`` trials (one pruned) and retrained members; reused when present."""
    import dashboard_load

    results = args.scratch / f"dashboard{args.dashboard_trials}"
    name, other = f"bench{args.dashboard_trials}", f"bench{args.dashboard_trials}_asha"
    for run, prune, seed in ((name, False, 0), (other, True, 1)):
        layout = RunLayout(results / run)
        if layout.read_info().get("status") == "finished" and len(layout.read_trials()) == args.dashboard_trials:
            continue
        shutil.rmtree(layout.root, ignore_errors=True)
        console.info(f"dashboard: generating {run} ({args.dashboard_trials} trials x {EPOCHS} epochs)")
        dashboard_load.make_run(layout.root, args.dashboard_trials, EPOCHS, prune=prune, seed=seed)
        if not prune:
            dashboard_load.add_models(layout.root)
    return results, name, other


def time_pages(code_root: Path, results: Path, name: str, other: str, repeats: int, leaderboard: bool) -> dict:
    env = os.environ | {"PYTHONPATH": str(code_root)}
    out = subprocess.run([sys.executable, "-c", PAGES_SCRIPT, str(results), name, other, str(repeats),
                          "yes" if leaderboard else "no"], env=env, cwd=code_root, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"timing the pages of {code_root} failed:\n{out.stderr[-3000:]}")
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(timing["automl"]).is_relative_to(code_root), (timing["automl"], code_root)  # the code meant
    return timing


def dashboard_part(args) -> dict[str, Any]:
    results, name, other = dashboard_runs(args)
    before_code = args.scratch / "code_at_head"
    shutil.rmtree(before_code, ignore_errors=True)
    before_code.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", args.before_commit, "automl"], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before_code)], input=archive, check=True)
    head = args.before_commit
    console.info("dashboard: timing the working tree's pages")
    after = time_pages(REPO, results, name, other, args.repeats, leaderboard=True)["rows"]
    console.info(f"dashboard: timing the pages of git {head}, before the scale work")
    before = time_pages(before_code, results, name, other, min(args.repeats, 3), leaderboard=False)["rows"]
    rows = [{"code": "before", **r} for r in before] + [{"code": "after", **r} for r in after]
    print_table(f"dashboard, server side: {args.dashboard_trials} trials x {EPOCHS} epochs",
                ["code", "page", "cold ms", "warm ms", "kB"],
                [[r["code"], r["page"], r["cold_ms"], r["warm_median_ms"], r["response_kb"]] for r in rows])
    return {"trials": args.dashboard_trials, "epochs": EPOCHS, "repeats": args.repeats, "before_code": head,
            "rows": rows, "method": "Flask test client POST /_dash-update-component (the page's Dash callback), "
                                    "in a child process per code version"}


# --- driver and resume --------------------------------------------------------------------------------------------

def sleeping_trainable(sleep_s: float):
    """A Tune trainable that sleeps ``sleep_s`` per epoch instead of training: the engine's cost around a trial.

    It takes the setup arguments of :class:`automl.search._ray.CandidateTrainable` (the engine passes the same ones
    to any trainable given to ``run_search``), reports the metrics a candidate does with a score drawn from its
    configuration, and checkpoints every epoch like a candidate (a small file), so that Tune does all it does for a
    real trial. Defined in a function so that Ray pickles the class by value into its worker processes (they cannot
    import this script).
    """
    import json as json_
    import random as random_
    import time as time_

    from ray import tune

    class SleepTrainable(tune.Trainable):
        def setup(self, config, dataset=None, space=None, objective=None, training=None, seed=0, cpus=1):
            self.space, self.objective = space, objective
            self._start(config)

        def _start(self, config):
            self.params = self.space.active(config)
            self.quality = random_.Random(repr(sorted(self.params.items()))).uniform(0.25, 0.65)
            self.epochs, self.started = 0, time_.monotonic()

        def step(self):
            time_.sleep(sleep_s)
            self.epochs += 1
            value = self.quality * (1 - 0.5 ** self.epochs)
            metrics = {"loss": 2 - value, "accuracy": 0.5 + value / 2, "val_balanced_accuracy": value,
                       "val_macro_f1": value * 0.85, "val_accuracy": 0.5 + value / 2, "val_auc": 0.7 + value / 3,
                       "val_loss": 2.1 - value, "learning_rate": 1e-3}
            return metrics | {"epoch": self.epochs, "elapsed_s": time_.monotonic() - self.started}

        def save_checkpoint(self, checkpoint_dir):
            Path(checkpoint_dir, "state.json").write_text(json_.dumps({"epochs": self.epochs}))

        def load_checkpoint(self, checkpoint):
            self.epochs = json_.loads(Path(checkpoint, "state.json").read_text())["epochs"]

        def reset_config(self, new_config):
            self._start(new_config)
            return True

    return SleepTrainable


def tiny_ham(root: Path) -> Path:
    """A HAM10000-layout folder of 7 classes x 12 lesions of 16 px images: the search needs data, the trials not."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    if (root / "HAM10000_metadata.csv").is_file():
        return root
    rng, rows = np.random.default_rng(0), []
    (root / "HAM10000_images").mkdir(parents=True, exist_ok=True)
    for c, dx in enumerate(("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")):
        for lesion in range(12):
            image_id = f"ISIC_{c * 12 + lesion:07d}"
            pixels = np.clip(rng.normal(40 + 30 * c, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "HAM10000_images" / f"{image_id}.jpg")
            rows.append({"lesion_id": f"HAM_{dx}_{lesion}", "image_id": image_id, "dx": dx})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def driver_child() -> None:
    """``scale.py --child-search SEARCHER TRIALS CONCURRENT SLEEP SNAPSHOT_PERIOD RESULTS NAME [resume]``: one
    sleeping search (SNAPSHOT_PERIOD: seconds, or ``default``)."""
    from automl.search import run_search
    from automl.spec import load_spec, search_overrides

    searcher, trials, concurrent, sleep_s, snapshot_period, results, name, *resume = sys.argv[2:]
    concurrent = int(concurrent)
    # The seeds' full space (TPE's cost grows with its dimensions too), trials of 1 or 2 epochs, 16 px data.
    settings = search_overrides({
        "searcher": searcher, "scheduler": "asha", "num_samples": int(trials), "max_epochs": 2, "grace_period": 1,
        "reduction_factor": 2, "max_concurrent": concurrent, "cpu": round(2 / concurrent, 4), "max_failures": 0,
        "portfolio": "none", "snapshot_period_s": None if snapshot_period == "default" else float(snapshot_period)})
    spec = load_spec("ham10000_cnn").with_overrides({"data.image_size": 16, **settings})
    data = tiny_ham(Path(results).parent / "ham16")
    run_search(spec, data, name, Path(results), resume=bool(resume), cache_dir=Path(results).parent / "cache",
               trainable=sleeping_trainable(float(sleep_s)))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_processes(sid: int) -> dict[int, str]:
    """Processes of a session (what a child started with ``start_new_session`` left running), by pid: their names."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
    return found


def start_search(args, searcher: str, trials: int, name: str, resume: bool = False) -> subprocess.Popen:
    results = args.scratch / "driver"
    results.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(results / name, ignore_errors=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child-search", searcher, str(trials),
               str(args.driver_concurrent), str(args.sleep), str(args.snapshot_period or "default"), str(results),
               name, *(["resume"] if resume else [])]
    log = open(results / f"{name}.log", "a")  # noqa: SIM115 - the child writes it until it ends
    # Ray starts its workers at niceness 15: on a machine whose cores other work keeps busy they would wait behind
    # it, and the measurement would be of that work, not of Tune. Here they run at the driver's niceness.
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                            env=os.environ | LOCAL_RAY | {"RAY_worker_niceness": "0"})


def store_counts(run_dir: Path) -> tuple[int, int, set[str]]:
    """Trials started and finished, and the finished ids, as the store on disk has them."""
    table = RunLayout(run_dir).trial_table
    if not table.exists():
        return 0, 0, set()
    trials = table.read()
    finished = set(trials.loc[trials["status"].isin(["completed", "pruned", "errored"]), "trial_id"])
    return len(trials), len(finished), finished


def ray_cpu(sid: int, driver: int) -> float:
    """CPU seconds of the session's other processes still alive (Ray's GCS, raylet, workers)."""
    return sum(c for pid in session_processes(sid) if pid != driver and (c := cpu_seconds(pid)) is not None)


def io_written_by(pid: int) -> int | None:
    try:
        return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/io").read_text().splitlines()
                    if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return None


def monitor_search(child: subprocess.Popen, run_dir: Path, every: int, stop_at: int | None = None,
                   max_s: float = math.inf) -> list[dict]:
    """Poll the store and the driver every 2 s until the search ends (``stop_at`` trials finished, or ``max_s``
    passed); a row when its first trial started, then one each time another ``every`` trials finished: seconds,
    trials started and finished, CPU seconds of the driver and of Ray's processes, bytes the driver wrote."""
    started, rows, next_mark = time.monotonic(), [], 0
    while child.poll() is None and time.monotonic() - started < max_s:
        time.sleep(2.0)
        cpu, wrote = cpu_seconds(child.pid), io_written_by(child.pid)
        begun, done, _ = store_counts(run_dir)
        if cpu is None or not begun:
            continue
        if done >= next_mark or (stop_at and done >= stop_at):
            rows.append({"finished": done, "started": begun, "running": begun - done,
                         "elapsed_s": round(time.monotonic() - started, 1),
                         "driver_cpu_s": round(cpu, 2), "ray_cpu_s": round(ray_cpu(child.pid, child.pid), 1),
                         "driver_mb_written": round((wrote or 0) / 2**20, 2)})
            next_mark = (done // every + 1) * every
            if stop_at and done >= stop_at:
                break
    return rows


def windows(rows: list[dict]) -> list[dict]:
    """Per stretch between two monitor rows: trials started and finished per second, driver CPU s per trial."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        seconds, done = b["elapsed_s"] - a["elapsed_s"], b["finished"] - a["finished"]
        if seconds <= 0 or done <= 0:
            continue
        out.append({"trials": f"{a['finished']}-{b['finished']}", "seconds": round(seconds, 1),
                    "started_per_s": round((b["started"] - a["started"]) / seconds, 2),
                    "finished_per_s": round(done / seconds, 2), "running_at_end": b["running"],
                    "driver_cpu_s_per_trial": round((b["driver_cpu_s"] - a["driver_cpu_s"]) / done, 4),
                    "ray_cpu_s_per_trial": round((b["ray_cpu_s"] - a["ray_cpu_s"]) / done, 4),
                    "driver_mb_written_per_min": round(60 * (b["driver_mb_written"] - a["driver_mb_written"])
                                                       / seconds, 2)})
    return out


def driver_run(args, searcher: str) -> dict[str, Any]:
    name = f"sleep_{searcher}"
    run_dir = args.scratch / "driver" / name
    console.info(f"driver: {searcher} search of {args.driver_trials} sleeping trials, {args.driver_concurrent} at once")
    child = start_search(args, searcher, args.driver_trials, name)
    try:
        rows = monitor_search(child, run_dir, every=200, max_s=60 * args.driver_max_minutes)
    finally:
        stop_child(child)
    total, done, _ = store_counts(run_dir)
    stretches = windows(rows)
    print_table(f"driver, {searcher} searcher: every 200 finished trials", list(stretches[0]) if stretches else [],
                [list(w.values()) for w in stretches])
    first, last = (stretches[0], stretches[-1]) if stretches else ({}, {})
    return {"trials_planned": args.driver_trials, "trials_started": total, "trials_finished": done,
            "returncode": child.returncode, "rows": rows, "windows": stretches,
            "cpu_per_trial_last_over_first": (last["driver_cpu_s_per_trial"] / first["driver_cpu_s_per_trial"]
                                              if first.get("driver_cpu_s_per_trial") else None),
            "finished_per_s_first_over_last": (first["finished_per_s"] / last["finished_per_s"]
                                               if last.get("finished_per_s") else None)}


def driver_part(args) -> dict[str, Any]:
    done = {} if args.force else load_result(args.out, "driver").get("searchers", {})
    for searcher in args.driver_searchers.split(","):
        if searcher in done:
            console.info(f"driver: {searcher} already measured")
            continue
        done[searcher] = driver_run(args, searcher)
        write_result(result_path(args.out, "driver"), {"part": "driver", "complete": False,
                                                       **driver_settings(args), "searchers": done})
    return {**driver_settings(args), "searchers": done}


def driver_settings(args) -> dict[str, Any]:
    from automl.search._ray import CHECKPOINTS_KEPT
    from automl.search._report import LINES_UP_TO, SUMMARY_EVERY_S
    from automl.store import FLUSH_EVERY_S, FLUSH_ROWS

    return {"concurrent": args.driver_concurrent, "cpu_per_trial": round(2 / args.driver_concurrent, 4),
            "sleep_s_per_report": args.sleep, "reports_per_trial": "1 or 2 (ASHA: grace period 1, max 2 epochs)",
            "checkpoint": "every report, as a candidate's", "worker_niceness": 0,
            "product_settings": {"checkpoints_kept_per_trial": CHECKPOINTS_KEPT or "all while it runs, none after",
                                 "tune_auto_loggers": "off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1)",
                                 "experiment_snapshot_period": (f"{args.snapshot_period:.0f} s (--snapshot-period)"
                                                                if args.snapshot_period else "Tune's auto: max(10 s, "
                                                                "19 x the last snapshot's time)"),
                                 "store_flush": f"every {FLUSH_EVERY_S} s or {FLUSH_ROWS} epoch rows, writer thread",
                                 "progress": f"a line per trial up to {LINES_UP_TO}, then a summary every "
                                             f"{SUMMARY_EVERY_S:.0f} s and new bests"}}


def resume_part(args) -> dict[str, Any]:
    name, trials = "sleep_resume", args.resume_trials
    run_dir = args.scratch / "driver" / name
    console.info(f"resume: random search of {trials} sleeping trials, killed with SIGKILL at half")
    child = start_search(args, "random", trials, name)
    monitor_search(child, run_dir, every=10**9, stop_at=trials // 2, max_s=60 * args.driver_max_minutes)
    os.kill(child.pid, signal.SIGKILL)  # the driver alone: its Ray should die with it
    child.wait()
    time.sleep(5)
    left = session_processes(child.pid)
    if left:
        os.killpg(child.pid, signal.SIGKILL)  # nothing of ours outlives the measurement
    started_before, finished_before, ids_before = store_counts(run_dir)
    console.info(f"resume: killed with {finished_before} of {trials} finished in the store; resuming")
    again = start_search(args, "random", trials, name, resume=True)
    try:
        monitor_search(again, run_dir, every=10**9, max_s=60 * args.driver_max_minutes)
    finally:
        stop_child(again)
    final = RunLayout(run_dir).read_trials()
    finished = final[final["status"].isin(["completed", "pruned", "errored"])]
    from automl.search._ray import ORPHANED

    result = {"trials": trials, "killed_at": {"started": started_before, "finished": finished_before},
              "left_running_after_kill": sorted(set(left.values())),
              "after_resume": {"trials": len(final), "finished": len(finished),
                               "status": final["status"].value_counts().to_dict(),
                               "orphaned": int((final.get("error") == ORPHANED).sum()) if "error" in final else 0},
              "finished_before_kept": ids_before <= set(finished["trial_id"]),
              "finished_before_lost": len(ids_before - set(finished["trial_id"])),
              "run_status": RunLayout(run_dir).read_info().get("status"), "returncode": again.returncode}
    print_table("nothing lost: SIGKILL of the driver, then --resume", ["", "value"],
                [[k, json.dumps(v)] for k, v in result.items()])
    return result




# --- main --------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--force", action="store_true", help="measure parts whose result file exists again")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--store-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 10000])
    parser.add_argument("--workers", type=int, default=500, help="store: simulated workers")
    parser.add_argument("--report-every", type=float, default=3.0, help="store: simulated seconds between reports")
    parser.add_argument("--window", type=int, default=400, help="store: reports timed at the end of a pre-loaded run")
    parser.add_argument("--before-full-max", type=int, default=1000,
                        help="store: the old store runs whole up to this many trials, beyond it the window only")
    parser.add_argument("--dashboard-trials", type=int, default=10000)
    parser.add_argument("--before-commit", default="82646e1",
                        help="dashboard: the code measured as 'before' (the last commit before the scale work)")
    parser.add_argument("--repeats", type=int, default=5, help="dashboard: warm requests per page")
    parser.add_argument("--driver-trials", type=int, default=5000)
    parser.add_argument("--driver-concurrent", type=int, default=50)
    parser.add_argument("--driver-searchers", default="random,optuna")
    parser.add_argument("--sleep", type=float, default=1.0, help="driver: seconds each report sleeps")
    parser.add_argument("--driver-max-minutes", type=float, default=12.0,
                        help="driver: a search still running after this is stopped (Ctrl-C) and reported as such")
    parser.add_argument("--snapshot-period", type=float, default=None,
                        help="driver, resume: the searches' search.snapshot_period_s (default: the product's)")
    parser.add_argument("--resume-trials", type=int, default=1000)
    args = parser.parse_args()
    args.scratch = args.out / "runs" / "scale"
    return args


def main() -> None:
    if sys.argv[1:2] == ["--child-search"]:
        driver_child()
        return
    args = parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    check_idle()
    handlers = {"store": store_part, "dashboard": dashboard_part, "driver": driver_part, "resume": resume_part}
    for part in args.parts.split(","):
        if part not in PARTS:
            raise SystemExit(f"--parts: unknown part {part!r}; one of {', '.join(PARTS)}")
        path = result_path(args.out, part)
        if load_result(args.out, part).get("complete") and not args.force:
            console.info(f"{part}: already measured ({path}); --force measures it again")
            continue
        started = time.monotonic()
        result = handlers[part](args)
        write_result(path, {"part": part, "complete": True, "seconds": round(time.monotonic() - started, 1),
                            **result})
        console.info(f"{part}: wrote {path}")


if __name__ == "__main__":
    main()
