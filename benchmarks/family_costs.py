"""A search's model families side by side: the best trial of each, and what an epoch of each costs.

Reads a run's store (``trials.parquet``, ``epochs.parquet``). Parameter counts come from the store's
``parameters`` column; a run recorded before the store had it gets them by building each trial's model
with the product's builder (no training). Seconds per epoch are counted as the store counts them
(:func:`automl.store.epoch_seconds`: ``epoch_s``, or for older runs differences of ``elapsed_s``, the
first epoch then including building the model). They are measured
while ``max_concurrent`` trials shared the machine's cores, as the search ran them::

    python benchmarks/family_costs.py --run results/reference-mixed

Prints two tables and writes ``results/benchmarks/family_costs-RUN.json`` and ``.md``.

With ``--sizes`` it also measures, on this machine alone, what an epoch of each family's best trial costs at each
image size (``--data``, e.g. ``ham10000_200x150``): ``--batches`` training batches after as many for warm-up, and a
validation pass over ``--batches`` prediction batches, each scaled to the split's batch count (an epoch is the train
split in ``batch_size`` batches plus the validation split in prediction batches)::

    python benchmarks/family_costs.py --run results/reference-mixed --sizes 28 64 128 112x150 \\
        --data ../shared/data/ham10000_200x150

which writes ``results/benchmarks/family_costs-RUN-sizes.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, REPO, write_result, write_text_result  # noqa: E402

from automl.layout import (  # noqa: E402
    FAMILY_COLUMN,
    PARAMETERS,
    RunLayout,
    best_column,
    hyperparameter_columns,
    hyperparameter_name,
)
from automl.spec import load_spec  # noqa: E402
from automl.store import epoch_seconds  # noqa: E402

#: Hyperparameters that say what a family's best trial is, beside its family.
SHAPE = {"cnn": ("conv_blocks", "convs_per_block", "base_filters", "filter_growth", "padding", "batch_norm"),
         "resnet": ("resnet_stages", "resnet_blocks", "resnet_width", "resnet_stem_stride"),
         "backbone": ("backbone", "backbone_input_size", "weights")}
COMMON = ("head", "optimizer", "learning_rate", "batch_size", "imbalance", "colour_constancy")


def trial_params(row: pd.Series, columns: list[str]) -> dict:
    return {hyperparameter_name(c): (row[c].item() if hasattr(row[c], "item") else row[c])
            for c in columns if not (isinstance(row[c], float) and np.isnan(row[c]))}


def parameter_counts(trials: pd.DataFrame, run: RunLayout) -> pd.Series:
    """The store's counts, or each trial's model built (not trained) for a run recorded without them."""
    if PARAMETERS in trials and trials[PARAMETERS].notna().all():
        return trials[PARAMETERS]
    from automl.errors import SpecError
    from automl.hparams import ModelConfig
    from automl.model import build_model

    spec = load_spec(run.spec)
    classes = 2 if spec.data.task == "binary" else 7
    columns = hyperparameter_columns(trials)
    counts = []
    for _, row in trials.iterrows():
        try:
            config = ModelConfig.from_params(spec.space.active(trial_params(row, columns)))
            counts.append(build_model(config, tuple(spec.data.image_size), classes).count_params())
        except SpecError:
            counts.append(np.nan)  # infeasible: never trained
    return pd.Series(counts, index=trials.index)


def spent_seconds(epochs: pd.DataFrame) -> pd.DataFrame:
    """Each trial's epochs with the seconds each took, as the store counts them (:func:`automl.store.epoch_seconds`)."""
    rows = []
    for trial_id, group in epochs.groupby("trial_id"):
        records = {int(r["epoch"]): r for r in group.to_dict("records")}
        rows += [{"trial_id": trial_id, "seconds": s} for s in epoch_seconds(records)]
    return pd.DataFrame(rows, columns=["trial_id", "seconds"])


def epoch_seconds_at(params: dict, dataset, batches: int) -> dict:
    """Seconds of one epoch of ``params`` on ``dataset``, estimated from ``batches`` timed training steps (after as
    many for warm-up) and ``batches`` prediction batches, each scaled to the splits' batch counts."""
    import math
    import time

    from automl.hparams import ModelConfig
    from automl.spec import TrainingSpec
    from automl.trial import build_candidate, gathered, predict_batch_size, training_batches

    config = ModelConfig.from_params(params)
    model = build_candidate(config, dataset, TrainingSpec())
    train = training_batches(config, dataset, seed=0)
    steps = min(batches, len(train))
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)  # warm-up: tracing, first batches
    started = time.monotonic()
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    per_step = (time.monotonic() - started) / steps
    val_rows, size = dataset.rows("val"), predict_batch_size(dataset.image_size)
    chunks = list(gathered(dataset.images, val_rows[: size * batches], size))
    model(chunks[0], training=False)  # warm-up
    started = time.monotonic()
    for chunk in chunks:
        model(chunk, training=False).numpy()
    per_chunk = (time.monotonic() - started) / len(chunks)
    train_s, val_s = per_step * len(train), per_chunk * math.ceil(len(val_rows) / size)
    return {"train_s": train_s, "val_s": val_s, "epoch_s": train_s + val_s,
            "parameters": int(model.count_params()), "batch_size": config.batch_size}


def measure_sizes(args, run: RunLayout, best_rows: dict, columns: list[str]) -> None:
    """Each family's best trial at each of ``args.sizes`` on this machine: seconds per epoch."""
    from automl.data import load_dataset
    from automl.spec import parse_image_size

    spec = load_spec(run.spec)
    trials = run.read_trials().set_index("trial_id")
    rows, table = [], []
    for size in args.sizes:
        hw = parse_image_size(size, "--sizes")
        dataset = load_dataset(args.data, **(spec.data.dataset_args() | {"image_size": hw}))
        for family, best in best_rows.items():
            # In the space's own types (an int column with gaps reads back as floats).
            params = spec.space.configuration(trial_params(trials.loc[best["trial_id"]], columns))
            cost = epoch_seconds_at(params, dataset, args.batches)
            rows.append({"family": family, "trial_id": best["trial_id"], "size": list(hw), **cost})
            table.append(f"| {family} | {best['trial_id']} | {hw[0]}x{hw[1]} | {cost['parameters'] / 1e6:.2f}M | "
                         f"{cost['train_s']:.1f} | {cost['val_s']:.1f} | {cost['epoch_s']:.1f} |")
            print(table[-1], flush=True)
    text = (f"Seconds per epoch of each family's best trial in `{run.name}`, on {args.data.name}, measured alone on "
            f"this machine ({args.batches} training steps after as many for warm-up, and {args.batches} prediction "
            "batches, scaled to the train and val splits)\n\n| family | trial | image size | parameters | train s | "
            "val s | s/epoch |\n| --- | --- | --- | ---: | ---: | ---: | ---: |\n" + "\n".join(table) + "\n")
    write_result(args.out / f"family_costs-{run.name}-sizes.json", {"run": run.name, "data": args.data.name,
                                                                   "batches": args.batches, "rows": rows})
    write_text_result(args.out / f"family_costs-{run.name}-sizes.md", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sizes", nargs="*", default=[], help="image sizes (S or HxW) to measure each family at")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ham10000_200x150")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement (default 30)")
    args = parser.parse_args()

    run = RunLayout(args.run)
    trials, epochs = run.read_trials(), run.read_epochs()
    objective = load_spec(run.spec).objective
    if FAMILY_COLUMN not in trials:
        trials[FAMILY_COLUMN] = "cnn"
    trials["parameters"] = parameter_counts(trials, run)
    epochs = spent_seconds(epochs).merge(trials[["trial_id", FAMILY_COLUMN]], on="trial_id")
    best_score = best_column(objective.name)
    columns = hyperparameter_columns(trials)
    families, best_rows = {}, {}
    for family, group in trials.groupby(FAMILY_COLUMN):
        trained = group[group["epochs"] > 0]
        spent = epochs[epochs[FAMILY_COLUMN] == family]
        families[family] = {
            "trials": int(len(group)), "trained": int(len(trained)),
            "statuses": {k: int(v) for k, v in group["status"].value_counts().items()},
            "epochs": int(spent.shape[0]), "seconds": float(spent["seconds"].sum()),
            "median_s_per_epoch": float(spent["seconds"].median()) if len(spent) else float("nan"),
            "epochs_per_s": float(len(spent) / spent["seconds"].sum()) if len(spent) else float("nan"),
            "median_parameters": float(trained["parameters"].median()) if len(trained) else float("nan"),
            "parameters_range": [float(trained["parameters"].min()), float(trained["parameters"].max())]
            if len(trained) else [],
        }
        if len(trained):
            best = trained.iloc[objective.best_index(trained[best_score].tolist())]
            params = trial_params(best, columns)
            best_rows[family] = {"trial_id": best["trial_id"], "score": float(best[best_score]),
                                 "status": best["status"], "epochs": int(best["epochs"]),
                                 "parameters": float(best["parameters"]),
                                 "shape": {k: params[k] for k in (*SHAPE.get(family, ()), *COMMON) if k in params}}
    lines = [f"Model families in `{run.name}` ({len(trials)} trials; objective {objective.name}, best over a trial's "
             "epochs). Seconds per epoch measured as the search ran (trials sharing 2 cores).", "",
             "| family | trials (trained) | epochs | median s/epoch | epochs/s | median parameters | best "
             f"{objective.name} | best trial |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for family, row in families.items():
        best = best_rows.get(family)
        shape = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in best["shape"].items()) if best else ""
        lines.append(f"| {family} | {row['trials']} ({row['trained']}) | {row['epochs']} | "
                     f"{row['median_s_per_epoch']:.1f} | {row['epochs_per_s']:.3f} | "
                     f"{row['median_parameters'] / 1e6:.2f}M | "
                     + (f"{best['score']:.3f} | {best['trial_id']} ({best['status']}, {best['epochs']} epochs, "
                        f"{best['parameters'] / 1e6:.2f}M parameters): {shape} |" if best else "- | - |"))
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / f"family_costs-{run.name}.json", {"run": run.name, "families": families,
                                                             "best": best_rows})
    (args.out / f"family_costs-{run.name}.md").write_text(table)
    if args.sizes:
        measure_sizes(args, run, best_rows, columns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
