"""Epoch cost: the seconds of one training epoch under each imbalance strategy, and across the search space.

    nice -n 15 python benchmarks/epoch_cost.py                             # both parts, 20 draws: 10-30 min
    python benchmarks/epoch_cost.py --draws 2 --epochs 1 --out /tmp/cost  # a smoke test, about 2 min

Every epoch is as many training samples as the train split has, whatever the imbalance strategy
(``automl.trial.epoch_class_counts``); oversampling used to add samples, 1.5x to 4.7x of them. Two parts
(``--parts ratio,draws``), each trained as a search trial trains (``EpochRunner``, ``--threads`` TensorFlow
threads like a trial's CPUs), on ``--data`` at 28 px with the lesion-grouped split:

ratio
    One mid-size configuration (:data:`RATIO_CONFIG`) under each of :data:`STRATEGIES`: one warm-up epoch
    (graph tracing), then ``--epochs`` timed epochs, the strategies taking turns so that load from other work
    falls on all of them alike. Per strategy: samples per epoch (and what the old oversampling drew), median
    epoch seconds, and the ratio to ``imbalance: none`` (goal: within 1.2x).
draws
    ``--draws`` random draws of ``automl/search_spaces/ham10000_cnn.yaml`` (draws too deep for 28 px are skipped and
    counted), each trained for one epoch as a trial's first: its seconds include the graph tracing every trial
    pays. The spread of epoch seconds (min, median, max, max/min), and the median per imbalance strategy.

Resumable: one JSON line per finished measurement (the ratio part, each draw) in ``OUT/runs/epoch_cost.jsonl``;
a rerun measures only what is missing (``--force`` starts over). Writes ``OUT/epoch_cost.json``.
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
from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.spec import load_spec
from automl.trial import EpochRunner, configure_tensorflow, oversampled_counts

SPACE = REPO / "automl" / "search_spaces" / "ham10000_cnn.yaml"
PARTS = ("ratio", "draws")
# Two blocks of one conv, 32 filters doubling, dense 128, batch 64: a mid-size candidate of the space.
RATIO_CONFIG = {"conv_blocks": 2, "convs_per_block": 1, "base_filters": 32, "dense_units": 128, "batch_size": 64,
                "flip_horizontal": True, "flip_vertical": True}
# (imbalance, oversample_to): none, and the oversampling settings of the space, the majority (0) the costliest.
STRATEGIES = (("none", 0), ("oversample", 0), ("oversample", 2000), ("oversample", 1000), ("both", 1000))
RATIO_GOAL = 1.2
MAX_ATTEMPTS_PER_DRAW = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per strategy in the ratio part (default 3)")
    parser.add_argument("--draws", type=int, default=20, help="random draws of the space (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads, as a trial's CPUs (default 1)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="HAM10000 folder (default ../shared/data/ham10000_28)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/benchmarks)")
    parser.add_argument("--force", action="store_true", help="forget the measurements of an earlier invocation")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(args.parts) - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(set(args.parts) - set(PARTS)))}; parts are "
                     f"{', '.join(PARTS)}")
    if min(args.epochs, args.draws, args.threads) < 1:
        parser.error("--epochs, --draws and --threads must be at least 1")
    return args


def runner(params: dict[str, Any], dataset, spec) -> EpochRunner:
    keras.backend.clear_session()
    return EpochRunner(ModelConfig.from_params(params), dataset, spec.objective, spec.training,
                       seed=spec.training.seed)


def measure_ratio(dataset, spec, epochs: int) -> dict[str, Any]:
    """Every strategy's runner warmed up by one epoch, then ``epochs`` rounds of one timed epoch each, in turn."""
    runners, seen = {}, {}
    for imbalance, oversample_to in STRATEGIES:
        console.info(f"ratio: warming up {imbalance} {oversample_to} ...")
        made = runner(RATIO_CONFIG | {"imbalance": imbalance, "oversample_to": oversample_to}, dataset, spec)
        seen[imbalance, oversample_to] = made.run_epoch()["samples_seen"]
        runners[imbalance, oversample_to] = made
    seconds = {key: [] for key in runners}
    samples = {key: [] for key in runners}
    for round_ in range(epochs):
        console.info(f"ratio: round {round_ + 1}/{epochs} ...")
        for key, made in runners.items():
            logs = made.run_epoch()
            seconds[key].append(logs["epoch_s"])
            samples[key].append(int(logs["samples_seen"] - seen[key]))  # samples_seen counts since the start
            seen[key] = logs["samples_seen"]
    counts = dataset.class_counts("train")
    rows = []
    for (imbalance, oversample_to), secs in seconds.items():
        oversampled = imbalance in ("oversample", "both")
        before = int((oversampled_counts(counts, oversample_to) if oversampled else counts).sum())
        rows.append({"imbalance": imbalance, "oversample_to": oversample_to, "epoch_s": secs,
                     "median_s": statistics.median(secs), "samples_per_epoch": samples[imbalance, oversample_to][-1],
                     "samples_per_epoch_before": before})
    base = rows[0]["median_s"]
    for row in rows:
        row["ratio_to_none"] = row["median_s"] / base
    return {"part": "ratio", "config": RATIO_CONFIG, "epochs": epochs, "strategies": rows,
            "worst_ratio": max(r["ratio_to_none"] for r in rows), "goal": RATIO_GOAL}


def measure_draw(index: int, params: dict[str, Any], dataset, spec) -> dict[str, Any]:
    row = {"part": "draws", "draw": index, "params": params}
    try:
        made = runner(params, dataset, spec)
    except SpecError as exc:  # too deep for 28 px, as a search reports it
        return row | {"infeasible": str(exc)}
    started = time.monotonic()
    logs = made.run_epoch()
    return row | {"epoch_s": logs["epoch_s"], "step_s": time.monotonic() - started,
                  "samples_seen": int(logs["samples_seen"]), "parameters": int(made.model.count_params()),
                  "val_balanced_accuracy": logs["val_balanced_accuracy"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values),
            "max_over_min": max(values) / min(values)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = check_idle()
    configure_tensorflow(args.threads)
    spec = load_spec(SPACE)
    dataset = load_dataset(args.data, **spec.data.dataset_args())
    (args.out / RUNS).mkdir(parents=True, exist_ok=True)
    log = args.out / RUNS / "epoch_cost.jsonl"
    if args.force:
        log.unlink(missing_ok=True)
    recorded = [r for r in read_rows(log) if r.get("data") == str(args.data) and r.get("threads") == args.threads]
    tag = {"data": str(args.data), "threads": args.threads}
    result: dict[str, Any] = {"space": str(SPACE.relative_to(REPO)), "data": str(args.data), "threads": args.threads,
                              "load_average_at_start": load, "n_train": int(dataset.class_counts("train").sum())}

    if "ratio" in args.parts:
        ratio = next((r for r in recorded if r["part"] == "ratio" and r["epochs"] == args.epochs
                      and r["config"] == RATIO_CONFIG), None)
        if ratio is None:
            ratio = measure_ratio(dataset, spec, args.epochs) | tag
            append_row(log, ratio)
        print_table(f"One epoch of the same configuration under each imbalance strategy ({args.epochs} timed)",
                    ["imbalance", "oversample_to", "samples/epoch", "before", "median s", "ratio to none"],
                    [[r["imbalance"], r["oversample_to"], r["samples_per_epoch"], r["samples_per_epoch_before"],
                      fmt(r["median_s"], 2), fmt(r["ratio_to_none"], 2)] for r in ratio["strategies"]],
                    caption=f"before: samples an epoch drew before epochs were equal. Goal: within {RATIO_GOAL}x.")
        result["ratio"] = ratio

    if "draws" in args.parts:
        by_draw = {r["draw"]: r for r in recorded if r["part"] == "draws"}
        pool = sample_params(SPACE, args.draws * MAX_ATTEMPTS_PER_DRAW, seed=args.seed)
        rows = []
        for index, params in enumerate(pool):
            if sum("epoch_s" in r for r in rows) >= args.draws:
                break
            row = by_draw.get(index)
            if row is None or row["params"] != params:
                console.info(f"draw {index}: {params.get('conv_blocks')} blocks x {params.get('convs_per_block')}, "
                             f"{params.get('imbalance')} ...")
                row = measure_draw(index, params, dataset, spec) | tag
                append_row(log, row)
            rows.append(row)
        feasible = [r for r in rows if "epoch_s" in r]
        print_table(f"One epoch of {len(feasible)} random draws of {SPACE.name} at 28 px",
                    ["draw", "imbalance", "to", "batch", "blocks x convs", "filters", "parameters", "epoch s"],
                    [[r["draw"], r["params"]["imbalance"], r["params"].get("oversample_to", "-"),
                      r["params"]["batch_size"], f"{r['params']['conv_blocks']} x {r['params']['convs_per_block']}",
                      r["params"]["base_filters"], f"{r['parameters']:,}", fmt(r["epoch_s"], 1)]
                     for r in sorted(feasible, key=lambda r: r["epoch_s"])],
                    caption=f"{len(rows) - len(feasible)} draws too deep for 28 px skipped. An epoch is "
                            f"{result['n_train']:,} samples for every draw.")
        by_imbalance = {}
        for row in feasible:
            by_imbalance.setdefault(row["params"]["imbalance"], []).append(row["epoch_s"])
        result["draws"] = {"requested": args.draws, "seed": args.seed, "skipped_infeasible": len(rows) - len(feasible),
                           "epoch_s": spread([r["epoch_s"] for r in feasible]) if feasible else None,
                           "median_epoch_s_by_imbalance": {k: statistics.median(v) for k, v in by_imbalance.items()},
                           "rows": rows}
        if feasible:
            s = result["draws"]["epoch_s"]
            console.info(f"epoch seconds over {s['n']} draws: min {s['min']:.1f}, median {s['median']:.1f}, "
                         f"max {s['max']:.1f} ({s['max_over_min']:.1f}x)")

    write_result(args.out / "epoch_cost.json", result)
    console.info(f"wrote {args.out / 'epoch_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
