"""Start-up plateau: validation balanced accuracy after each of the first epochs, with the output bias started at
the class mix the loss sees (``automl.model.set_output_prior``) and at zero (Keras' start, the previous one).

    nice -n 15 python benchmarks/start_plateau.py                     # 4 configs, 20 runs of 2 epochs: about 5 min
    python benchmarks/start_plateau.py --configs 1 --epochs 1 --out /tmp/plateau  # a smoke test

Draws ``--configs`` candidates at random from ``search_spaces/quick.yaml`` (whose imbalance is ``class_weight``
or ``both``) and trains each as a search trial does (``EpochRunner``: its batches, callbacks and seed, one CPU
thread like a trial of that space) for ``--epochs`` epochs on ``--data``, under three imbalance strategies:

drawn
    the strategy the space drew, with class weights. Class weights make the mix the loss sees uniform, so the
    bias starts at zero either way: one run stands for both starts (the script checks the bias is zero).
none, oversample
    the same network without class weights (``oversample`` up to the drawn ``oversample_to``): the mix the loss
    sees is the training prior or the oversampled mix, and the bias starts there or at zero: two runs each.

Per run: val balanced accuracy and val loss after each epoch, and whether the model is at chance (balanced
accuracy within 0.01 of 1/7: one class predicted for every image, the uniform-output plateau). Resumable: one
JSON line per finished run in ``OUT/runs/start_plateau.jsonl`` (``--force`` starts over); writes
``OUT/start_plateau.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from automl import console

console.import_tensorflow_quietly()

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    REPO,
    RUNS,
    append_row,
    check_idle,
    fmt,
    print_table,
    read_rows,
    sample_params,
    write_result,
)

from automl.data import load_dataset
from automl.hparams import ModelConfig
from automl.spec import load_spec
from automl.trial import EpochRunner, configure_tensorflow

SPACE = REPO / "search_spaces" / "quick.yaml"
CHANCE_MARGIN = 0.01
STRATEGIES = ("drawn", "none", "oversample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=4, help="candidates drawn from the space (default 4)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads, as a trial's CPUs (default 1)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="HAM10000 folder (default ../shared/data/ham10000_28)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/benchmarks)")
    parser.add_argument("--force", action="store_true", help="forget the runs recorded by an earlier invocation")
    args = parser.parse_args(argv)
    if min(args.configs, args.epochs, args.threads) < 1:
        parser.error("--configs, --epochs and --threads must be at least 1")
    return args


def runs(drawn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (config, strategy, start) to train: the drawn class-weighted strategy once, the others twice."""
    planned = []
    for index, params in enumerate(drawn):
        for strategy in STRATEGIES:
            imbalance = params["imbalance"] if strategy == "drawn" else strategy
            for prior_start in ((True,) if strategy == "drawn" else (True, False)):
                planned.append({"config": index, "strategy": strategy, "imbalance": imbalance,
                                "prior_start": prior_start, "params": params | {"imbalance": imbalance}})
    return planned


def train(run: dict[str, Any], dataset, spec, epochs: int) -> dict[str, Any]:
    keras.backend.clear_session()
    config = ModelConfig.from_params(run["params"])
    runner = EpochRunner(config, dataset, spec.objective, spec.training, seed=spec.training.seed)
    bias = runner.model.get_layer("probabilities").bias
    if run["strategy"] == "drawn":
        assert not bias.numpy().any(), "class weights: the output should start at zero"
    elif not run["prior_start"]:
        bias.assign(np.zeros(bias.shape, "float32"))
    start = bias.numpy().round(3).tolist()
    started, history = time.monotonic(), []
    for _ in range(epochs):
        logs = runner.run_epoch()
        history.append({k: logs[k] for k in ("val_balanced_accuracy", "val_loss", "loss", "epoch_s", "samples_seen")})
    return run | {"start_bias": start, "epochs": history, "seconds": time.monotonic() - started}


def at_chance(balanced_accuracy: float, n_classes: int = 7) -> bool:
    return abs(balanced_accuracy - 1 / n_classes) < CHANCE_MARGIN


def summarise(rows: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    """Per (strategy, start): mean val balanced accuracy and val loss after each epoch, and runs at chance."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["prior_start"]), []).append(row)
    out = []
    for (strategy, prior_start), group in groups.items():
        entry = {"strategy": strategy, "prior_start": prior_start, "runs": len(group)}
        for e in range(epochs):
            done = [r["epochs"][e] for r in group if len(r["epochs"]) > e]
            entry[f"bal_acc_{e + 1}"] = statistics.mean(d["val_balanced_accuracy"] for d in done)
            entry[f"val_loss_{e + 1}"] = statistics.mean(d["val_loss"] for d in done)
            entry[f"at_chance_{e + 1}"] = sum(at_chance(d["val_balanced_accuracy"]) for d in done)
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = check_idle()
    configure_tensorflow(args.threads)
    spec = load_spec(SPACE)
    dataset = load_dataset(args.data, **spec.data.dataset_args())
    drawn = sample_params(SPACE, args.configs, seed=args.seed)
    (args.out / RUNS).mkdir(parents=True, exist_ok=True)
    log = args.out / RUNS / "start_plateau.jsonl"
    if args.force:
        log.unlink(missing_ok=True)
    key = ("config", "strategy", "prior_start")
    done = {tuple(r[k] for k in key): r for r in read_rows(log)
            if r.get("data") == str(args.data) and len(r["epochs"]) >= args.epochs}
    rows = []
    for run in runs(drawn):
        found = done.get(tuple(run[k] for k in key))
        if found is not None and found["params"] == run["params"]:
            rows.append(found)
            continue
        console.info(f"config {run['config']} {run['imbalance']:<12} prior start {run['prior_start']!s:<5} ...")
        row = train(run, dataset, spec, args.epochs) | {"data": str(args.data)}
        append_row(log, row)
        rows.append(row)

    columns = ["config", "imbalance", "start"] + [f"bal acc {e + 1}" for e in range(args.epochs)] + [
        f"val loss {e + 1}" for e in range(args.epochs)] + ["s/epoch"]
    start = {"drawn": "zero = mix"} | {s: "mix" for s in STRATEGIES[1:]}
    table = [[r["config"], r["imbalance"], start[r["strategy"]] if r["prior_start"] else "zero",
              *[fmt(e["val_balanced_accuracy"]) + (" *" if at_chance(e["val_balanced_accuracy"]) else "")
                for e in r["epochs"][: args.epochs]],
              *[fmt(e["val_loss"]) for e in r["epochs"][: args.epochs]],
              fmt(statistics.mean(e["epoch_s"] for e in r["epochs"]), 1)] for r in rows]
    print_table("Start-up plateau: val balanced accuracy after each epoch", columns, table,
                caption="* at chance (within 0.01 of 1/7). Class-weighted runs start at zero bias either way.")
    summary = summarise(rows, args.epochs)
    write_result(args.out / "start_plateau.json", {
        "space": str(SPACE.relative_to(REPO)), "data": str(args.data), "configs": args.configs,
        "epochs": args.epochs, "seed": args.seed, "threads": args.threads, "load_average_at_start": load,
        "chance_margin": CHANCE_MARGIN, "summary": summary, "runs": rows})
    console.info(f"wrote {args.out / 'start_plateau.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
