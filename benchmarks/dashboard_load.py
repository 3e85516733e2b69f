"""Server-side page load time of the dashboard on a generated 200-trial, 20-epoch run.

Generates the run in a temporary results folder with :class:`automl.store.RunStore` (hyperparameters
sampled from ``automl/search_spaces/ham10000_cnn.yaml``, a simulated clock so wall times look like a real
search, plus retrained members and an ensemble so the models page has content), then times each
page as the browser asks for it: the Dash callback request through Flask's test client, which
covers reading the store, building the figures and serialising the page. "cold" is the first
request with empty caches, "warm" the median of later ones (the files are cached by mtime, as
between refreshes). Prints a table and writes ``results/benchmarks/dashboard_load.json``.

    python benchmarks/dashboard_load.py [--trials 200] [--epochs 20] [--repeats 7]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import optuna
import pandas as pd

import automl.store
from automl.dashboard import _runs, create_app
from automl.files import write_json
from automl.layout import RunLayout, best_column
from automl.metrics import classification_metrics
from automl.objective import Objective
from automl.spec import load_spec
from automl.store import RunStore, machine_info, write_run_info

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "automl" / "search_spaces" / "ham10000_cnn.yaml"
OBJECTIVE = Objective()
METRIC = OBJECTIVE.name
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
RUNGS = (2, 6, 18)  # ASHA with grace period 2 and reduction factor 3


def make_run(run_dir: Path, trials: int, epochs: int, prune: bool = False, running: int = 0, seed: int = 0) -> None:
    """A search run as RunStore writes it: ``trials`` trials of up to ``epochs`` epochs, the last ``running`` going on.

    With ``prune`` weak trials stop at ASHA-like rungs; without it every trial runs every epoch.
    """
    rng = np.random.default_rng(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(SPEC)
    sample = spec.space.optuna_define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    plan = []  # per trial: quality, epochs it gets, seconds each epoch takes
    for i in range(trials):
        quality = rng.uniform(0.25, 0.65)
        stop = next((r for r in RUNGS if prune and r < epochs and quality < 0.35 + 0.1 * RUNGS.index(r)), epochs)
        done = min(stop, 3 + i % 4) if i >= trials - running else stop
        plan.append((quality, done, i < trials - running, rng.uniform(2.0, 6.0, done)))
    # The store stamps epochs with time.time(): a simulated clock makes the wall-time axis look like a search's,
    # ending now, so a run in progress has a plausible duration.
    clock = SimpleNamespace(now=time.time() - sum(seconds.sum() for *_, seconds in plan))
    started = clock.now
    with mock.patch.object(automl.store, "time", SimpleNamespace(time=lambda: clock.now, monotonic=time.monotonic)):
        write_run_info(run_dir, name=run_dir.name, status="running", engine="ray", searcher="optuna",
                       scheduler="asha" if prune else "none", **OBJECTIVE.to_record(), num_samples=trials,
                       max_epochs=epochs, started=_iso(started), data_fingerprint="0123456789abcdef",
                       split="lesion-grouped, stratified by dx, 70%/15%/15% train/val/test, seed 0",
                       task="multiclass", image_size=[28, 28], hyperparameters=[d.name for d in spec.space.searched],
                       machine=machine_info())
        shutil.copy(SPEC, RunLayout(run_dir).spec)
        store = RunStore(run_dir, OBJECTIVE, max_epochs=epochs, flush_every_s=math.inf)
        for i, (quality, done, finished, seconds) in enumerate(plan):
            trial = study.ask()
            trial_id, start = f"{i:04d}{rng.integers(16**4):04x}", clock.now
            store.trial_started(trial_id, sample(trial) | trial.params)
            for epoch in range(1, done + 1):
                clock.now += seconds[epoch - 1]
                value = quality * (1 - math.exp(-epoch / 4)) + rng.normal(0, 0.015)
                metrics = {"loss": 2 - value, "accuracy": 0.5 + value / 2, METRIC: value, "val_macro_f1": value * 0.85,
                           "val_accuracy": 0.5 + value / 2, "val_auc": 0.7 + value / 3, "val_loss": 2.1 - value,
                           "learning_rate": trial.params.get("learning_rate", 1e-3)}
                store.epoch(trial_id, epoch, metrics, clock.now - start, {"hostname": "bench", "node_ip": "127.0.0.1"})
            if finished:
                store.trial_finished(trial_id, "completed")  # before max_epochs the store records it as pruned
        store.close()  # compacted: trials.parquet and epochs.parquet hold everything, as after a search
        if not running:
            write_run_info(run_dir, status="finished", ended=_iso(clock.now), wall_s=clock.now - started)


def add_models(run_dir: Path, members: int = 4, seed: int = 0) -> None:
    """Retrained members and a greedy ensemble in the files retrain and ensemble write, from synthetic probabilities."""
    rng = np.random.default_rng(seed)
    run = RunLayout(run_dir)
    trials = OBJECTIVE.sort(run.read_trials(), best_column(METRIC)).head(members)
    y_val, y_test = rng.integers(0, len(CLASSES), 1500), rng.integers(0, len(CLASSES), 1500)

    def probs(labels, skill):
        logits = rng.normal(0, 1, (len(labels), len(CLASSES)))
        logits[np.arange(len(labels)), labels] += skill
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    ids = [f"m{i + 1:02d}" for i in range(members)]
    results = {m: {"val": classification_metrics(y_val, probs(y_val, 1.5), CLASSES),
                   "test": classification_metrics(y_test, probs(y_test, 1.5), CLASSES)} for m in ids}
    results["ensemble"] = {"val": classification_metrics(y_val, probs(y_val, 2.0), CLASSES),
                           "test": classification_metrics(y_test, probs(y_test, 2.0), CLASSES),
                           "test_ci95": {"balanced_accuracy": [0.55, 0.62], "macro_f1": [0.5, 0.58]}}
    rows = [{"member_id": m, "trial_id": t["trial_id"], "seed": 0, "epochs": 30, "best_epoch": 20,
             **{f"{split}_{k}": v for split in ("val", "test") for k, v in results[m][split].items()
                if isinstance(v, float)}}
            for m, t in zip(ids, trials.to_dict("records"), strict=True)]
    run.retrain.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(run.members, index=False)
    write_json(run.ensemble_metrics, results)
    write_json(run.ensemble_json, {
        "method": "greedy", "members": ids, "weights": dict.fromkeys(ids, 1 / members), "greedy_picks": ids,
        "best_member": ids[0], "classes": list(CLASSES), "task": "multiclass"})


def _iso(unix: float) -> str:
    return pd.Timestamp(unix, unit="s", tz="UTC").isoformat(timespec="seconds")


def page_request(client, path: str, search: str = ""):
    """The request the browser makes to draw ``path``: Dash's callback for the page content."""
    payload = {"output": "..page.children...shown.data..",
               "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
               "inputs": [{"id": "url", "property": "pathname", "value": path},
                          {"id": "url", "property": "search", "value": search},
                          {"id": "refresh", "property": "n_intervals", "value": 0}],
               "changedPropIds": ["url.pathname"], "state": [{"id": "shown", "property": "data", "value": None}]}
    return client.post("/_dash-update-component", json=payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "dashboard_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results, name = Path(tmp), "bench200"
        started = time.perf_counter()
        make_run(results / name, args.trials, args.epochs)
        add_models(results / name)
        make_run(results / "bench200_asha", args.trials, args.epochs, prune=True, seed=1)
        generated_s = time.perf_counter() - started
        client = create_app(results).server.test_client()
        pages = {"experiments": ("/", ""), "experiment": (f"/runs/{name}", ""), "models": (f"/runs/{name}/models", ""),
                 "compare": ("/compare", f"?run={name}&run=bench200_asha")}
        rows = []
        for page, (path, search) in pages.items():
            _runs._cache.clear()
            times = []
            for _ in range(args.repeats + 1):
                t0 = time.perf_counter()
                response = page_request(client, path, search)
                times.append(time.perf_counter() - t0)
                assert response.status_code == 200 and "could not be drawn" not in response.get_data(as_text=True), page
            rows.append({"page": page, "path": path + search, "cold_ms": round(times[0] * 1000, 1),
                         "warm_median_ms": round(statistics.median(times[1:]) * 1000, 1),
                         "response_kb": round(len(response.data) / 1024, 1)})
    print(f"dashboard page load, server side: {args.trials} trials x {args.epochs} epochs "
          f"(fixture generated in {generated_s:.1f} s; median of {args.repeats})")
    print(f"{'page':<12} {'cold ms':>9} {'warm ms':>9} {'KB':>7}  path")
    for row in rows:
        print(f"{row['page']:<12} {row['cold_ms']:>9.1f} {row['warm_median_ms']:>9.1f} {row['response_kb']:>7.1f}  "
              f"{row['path']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"trials": args.trials, "epochs": args.epochs, "repeats": args.repeats, "pages": rows,
                          "method": "Flask test client POST /_dash-update-component (the page's Dash callback)",
                          "machine": machine_info(), "created": automl.store.utc_now()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
