"""Start-up plateau: validation balanced accuracy after each of the first epochs, with the output bias started at
the class mix the loss sees (``automl.model.set_output_prior``) and at zero (Keras' start, the previous one).

    nice -n 15 python benchmarks/start_plateau.py                     # 4 configs, 20 runs of 2 epochs: about 5 min
    python benchmarks/start_plateau.py --configs 1 --epochs 1 --out /tmp/plateau  # a smoke test
    # where ASHA's first rung should be: draws as the search draws them, 4 epochs each
    nice -n 15 python benchmarks/start_plateau.py --space automl/search_spaces/ham10000_cnn.yaml --strategies drawn \
        --configs 12 --epochs 4

Draws ``--configs`` candidates at random from ``--space`` (default ``automl/search_spaces/quick.yaml``, whose imbalance
is ``class_weight`` or ``both``), feasible ones only (as the searchers draw them), and trains each as a search
trial does (``EpochRunner``: its batches, callbacks and seed, one CPU thread like a trial of that space) for
``--epochs`` epochs on ``--data``, under the imbalance strategies of ``--strategies``:

drawn
    the strategy the space drew, the output bias started as the product starts it (at the mix the loss sees:
    zero with class weights, which make that mix uniform): one run.
none, oversample
    the same network without class weights (``oversample`` up to the drawn ``oversample_to``): the mix the loss
    sees is the training prior or the oversampled mix, and the bias starts there or at zero: two runs each.

Per run: val balanced accuracy and val loss after each epoch, and whether the model is at chance (balanced
accuracy within 0.01 of 1/7: one class predicted for every image, the uniform-output plateau). Per strategy and
epoch k, the summary also counts the runs at chance after epoch k that are off it by the last epoch (a first rung
at k would have pruned them while still on the plateau), and the Spearman correlation of the ranking after epoch k
with the ranking after the last (what a rung at k keeps). Resumable: one JSON line per finished run in
``OUT/runs/start_plateau[-SPACE][-STRATEGIES].jsonl`` (``--force`` starts over); writes
``OUT/start_plateau[-SPACE][-STRATEGIES].json`` (SPACE: the space file's stem, for any space but the default;
STRATEGIES: those given, when not all).
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
    CHANCE_MARGIN,
    DEFAULT_DATA,
    DEFAULT_OUT,
    REPO,
    RUNS,
    append_row,
    at_chance,
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

SPACE = REPO / "automl" / "search_spaces" / "quick.yaml"
STRATEGIES = ("drawn", "none", "oversample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=SPACE, help="search spec to draw from (default quick.yaml)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, of {', '.join(STRATEGIES)} (default all)")
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
    args.strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    if not args.strategies or set(args.strategies) - set(STRATEGIES):
        parser.error(f"--strategies: choose from {', '.join(STRATEGIES)}")
    return args


def feasible_draws(space_file: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """The first ``count`` random draws of the space that can run at its image size, as the searchers draw."""
    spec = load_spec(space_file)
    size = spec.data.image_size
    drawn, tries = [], count
    while len(drawn) < count:
        tries *= 2
        drawn = [params for params in sample_params(space_file, tries, seed=seed)
                 if spec.space.infeasible(params, size) is None][:count]
    return drawn


def runs(drawn: list[dict[str, Any]], strategies: list[str]) -> list[dict[str, Any]]:
    """Every (config, strategy, start) to train: the drawn strategy once, each of the others twice."""
    planned = []
    for index, params in enumerate(drawn):
        for strategy in strategies:
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
    if not run["prior_start"]:
        bias.assign(np.zeros(bias.shape, "float32"))
    start = bias.numpy().round(3).tolist()
    started, history = time.monotonic(), []
    for _ in range(epochs):
        logs = runner.run_epoch()
        history.append({k: logs[k] for k in ("val_balanced_accuracy", "val_loss", "loss", "epoch_s", "samples_seen")})
    return run | {"start_bias": start, "epochs": history, "seconds": time.monotonic() - started}


def summarise(rows: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    """Per (strategy, start) and epoch: mean val balanced accuracy and val loss, runs at chance, runs at chance that
    leave the plateau by the last epoch, and the rank correlation with the last epoch."""
    from scipy.stats import spearmanr

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
            full = [r["epochs"] for r in group if len(r["epochs"]) >= epochs]
            entry[f"leave_later_{e + 1}"] = sum(at_chance(h[e]["val_balanced_accuracy"])
                                                and not at_chance(h[-1]["val_balanced_accuracy"]) for h in full)
            if len(full) > 2 and e + 1 < epochs:
                rho = spearmanr([h[e]["val_balanced_accuracy"] for h in full],
                                [h[-1]["val_balanced_accuracy"] for h in full]).statistic
                entry[f"rank_corr_{e + 1}"] = None if np.isnan(rho) else float(rho)
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = check_idle()
    configure_tensorflow(args.threads)
    spec = load_spec(args.space)
    dataset = load_dataset(args.data, **spec.data.dataset_args())
    drawn = feasible_draws(args.space, args.configs, args.seed)
    (args.out / RUNS).mkdir(parents=True, exist_ok=True)
    # The default measurement keeps the plain name; another space or strategy set is named after them.
    suffix = ([] if args.space.resolve() == SPACE else [args.space.stem]) + (
        [] if args.strategies == list(STRATEGIES) else args.strategies)
    name = "-".join(["start_plateau", *suffix])
    log = args.out / RUNS / f"{name}.jsonl"
    if args.force:
        log.unlink(missing_ok=True)
    key = ("config", "strategy", "prior_start")
    done = {tuple(r[k] for k in key): r for r in read_rows(log)
            if r.get("data") == str(args.data) and len(r["epochs"]) >= args.epochs}
    rows = []
    for run in runs(drawn, args.strategies):
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
    start = {"drawn": "mix"} | {s: "mix" for s in STRATEGIES[1:]}
    table = [[r["config"], r["imbalance"], start[r["strategy"]] if r["prior_start"] else "zero",
              *[fmt(e["val_balanced_accuracy"]) + (" *" if at_chance(e["val_balanced_accuracy"]) else "")
                for e in r["epochs"][: args.epochs]],
              *[fmt(e["val_loss"]) for e in r["epochs"][: args.epochs]],
              fmt(statistics.mean(e["epoch_s"] for e in r["epochs"]), 1)] for r in rows]
    print_table("Start-up plateau: val balanced accuracy after each epoch", columns, table,
                caption="* at chance (within 0.01 of 1/7). Class-weighted runs start at zero bias either way.")
    summary = summarise(rows, args.epochs)
    print_table("Per strategy and epoch k: runs at chance after k, of them off the plateau by the last epoch, and "
                "the rank correlation of k with the last epoch",
                ["strategy", "start", "runs", *[f"epoch {e + 1}" for e in range(args.epochs)]],
                [[s["strategy"], "mix" if s["prior_start"] else "zero", s["runs"],
                  *[f"{s[f'at_chance_{e + 1}']} at chance, {s[f'leave_later_{e + 1}']} leave"
                    + (f", rho {fmt(s[f'rank_corr_{e + 1}'], 2)}" if s.get(f"rank_corr_{e + 1}") is not None else "")
                    for e in range(args.epochs)]] for s in summary])
    write_result(args.out / f"{name}.json", {
        "space": str(args.space), "strategies": args.strategies, "data": str(args.data), "configs": args.configs,
        "epochs": args.epochs, "seed": args.seed, "threads": args.threads, "load_average_at_start": load,
        "chance_margin": CHANCE_MARGIN, "summary": summary, "runs": rows})
    console.info(f"wrote {args.out / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
