"""``automl train``: one fixed configuration, trained with early stopping and evaluated on val and test."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from automl import console
from automl.data import RESIZE_METHOD, load_dataset
from automl.files import atomic_write, staged_dir, write_json
from automl.metrics import HEADLINE, prefixed
from automl.spec import Spec
from automl.store import machine_info
from automl.trial import EpochLine, evaluate, fit_candidate


def train_command(
    spec: Spec, data_dir: Path, out: Path, skip_bad_images: bool = False, cache_dir: Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Train the spec's configuration; write ``metrics.json``, ``model.keras``, ``history.csv``, ``spec.yaml``."""
    config = spec.model_config()  # validated before any data is read
    started = time.monotonic()
    dataset = load_dataset(data_dir, skip_bad_images=skip_bad_images, cache_dir=cache_dir, **spec.data.dataset_args())
    data_seconds = time.monotonic() - started
    for note in dataset.notes:
        console.info(f"note: {note}")
    counts = dataset.counts()
    console.info(
        f"data ready in {data_seconds:.2f}s: {len(dataset.table)} images at "
        f"{dataset.image_size[0]}x{dataset.image_size[1]}, "
        f"{dataset.task} ({len(dataset.class_names)} classes); train/val/test = "
        f"{'/'.join(str(int(counts[s].sum())) for s in ('train', 'val', 'test'))}; split: {dataset.split_protocol}"
    )
    console.info(f"training {spec.name} for up to {spec.training.epochs} epochs, early stopping on {spec.objective}")
    progress = EpochLine(spec.objective, spec.training.epochs, console.info)
    result = fit_candidate(config, dataset, spec.objective, spec.training, callbacks=[progress])
    val, test = evaluate(result.model, dataset, "val"), evaluate(result.model, dataset, "test")
    metrics = {
        **prefixed(val, "val"),
        **prefixed(test, "test"),
        "per_class": {"val": val["per_class"], "test": test["per_class"]},
        "confusion_matrix": {"val": val["confusion_matrix"], "test": test["confusion_matrix"]},
        "class_names": list(dataset.class_names),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "objective": spec.objective.to_record(),
        "train_seconds": round(result.seconds, 2),
        "data_seconds": round(data_seconds, 3),
        "parameters": int(result.model.count_params()),
        "data": {
            "dir": str(data_dir),
            "fingerprint": dataset.fingerprint,
            "task": dataset.task,
            "image_size": list(dataset.image_size),
            "resize": RESIZE_METHOD,
            "split": dataset.split_protocol,
            "counts": counts.to_dict(),
            "notes": dataset.notes,
        },
        "machine": machine_info(),
    }
    with staged_dir(out, overwrite=overwrite) as stage:
        write_json(stage / "metrics.json", metrics)
        result.model.save(stage / "model.keras")
        pd.DataFrame(result.history).to_csv(stage / "history.csv", index=False)
        atomic_write(stage / "spec.yaml", dataclasses.replace(spec, hyperparameters=config.to_params()).to_yaml())
    _print_summary(metrics, out)
    return metrics


def _print_summary(metrics: dict, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']} "
                        f"({metrics['train_seconds']:.0f}s)")
    table.add_column("split")
    for name in HEADLINE:
        table.add_column(name.replace("_", " "), justify="right")
    for split in ("val", "test"):
        table.add_row(split, *(f"{metrics[f'{split}_{name}']:.3f}" for name in HEADLINE))
    console.out.print(table)
    per_class = Table(title="test, per class")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, row in metrics["per_class"]["test"].items():
        per_class.add_row(name, f"{row['precision']:.2f}", f"{row['recall']:.2f}", f"{row['f1']:.2f}",
                          str(row["support"]))
    console.out.print(per_class)
    console.out.print(f"wrote {out}/metrics.json and {out}/model.keras")
