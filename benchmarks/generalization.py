"""Training levers for images from other clinics, one at a time, on one fixed configuration.

The configuration is the reference CNN run's best member (``results/reference-cnn``, member m01, chosen on
validation by that run). Each lever is trained with the reference's budget (``training`` of its spec:
up to 50 epochs, early stopping on the objective) for each seed, then measured on the lesion-grouped
test split and on ``isic_archive_150`` (other clinics; measured, never used to choose anything):

``baseline``           m01 as it was searched
``colour_aug``         + brightness/contrast/saturation/hue augmentation (training only)
``colour_constancy``   + Shades of Gray colour constancy (p = 6) inside the graph
``refit``              baseline retrained on train+val for the epochs its validation run chose

Each (lever, seed) is one training run; its metrics and per-image probabilities are written as it
finishes (``results/benchmarks/runs/generalization/``), so an interrupted run resumes where it stopped.
The summary (``results/benchmarks/generalization.json`` and ``.md``) gives every lever's mean over seeds
and paired bootstrap intervals of its difference from the baseline on the same images::

    python benchmarks/generalization.py --seeds 0 1            # train what is missing, then summarise
    python benchmarks/generalization.py --levers baseline --seeds 0   # one part (e.g. one per core)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, DEFAULT_OUT, REPO, RUNS, write_result  # noqa: E402

from automl import console  # noqa: E402
from automl.layout import RunLayout, hyperparameter_columns, hyperparameter_name  # noqa: E402
from automl.spec import load_spec  # noqa: E402

REFERENCE = REPO / "results" / "reference-cnn"
ARCHIVE = REPO.parent / "shared" / "data" / "isic_archive_150"
MEMBER = "m01"
LEVERS = {
    "baseline": {},
    "colour_aug": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05},
    "colour_constancy": {"colour_constancy": "shades_of_gray", "sog_p": 6.0},
    "refit": {},
}
MALIGNANT = ("mel", "bcc", "akiec")


def member_params() -> dict:
    members = RunLayout(REFERENCE).read_members().set_index("member_id")
    row = members.loc[MEMBER]
    params = {}
    for column in hyperparameter_columns(members):
        value = row[column]
        if isinstance(value, float) and np.isnan(value):
            continue
        params[hyperparameter_name(column)] = value.item() if hasattr(value, "item") else value
    return params


def train_one(lever: str, seed: int, data_dir: Path, folder: Path) -> dict:
    """Train one (lever, seed), export it as a model folder, score test and the archive; write everything."""
    from automl.data import load_dataset
    from automl.export import assemble, export_model
    from automl.hparams import ModelConfig
    from automl.trial import configure_tensorflow, fit_candidate, predict_proba

    configure_tensorflow(1)  # one core per process: run two parts side by side
    spec = load_spec(RunLayout(REFERENCE).spec)
    dataset = load_dataset(data_dir, **spec.data.dataset_args())
    config = ModelConfig.from_params(member_params() | LEVERS[lever])
    started = time.monotonic()
    if lever == "refit":
        baseline = json.loads((folder.parent / f"baseline-s{seed}" / "result.json").read_text())
        rates = baseline["learning_rates"][: baseline["best_epoch"]]
        result = fit_candidate(config, dataset.with_train_and_val(), spec.objective, spec.training,
                               epochs=len(rates), seed=seed, learning_rates=rates)
    else:
        result = fit_candidate(config, dataset, spec.objective, spec.training, seed=seed)
    seconds = time.monotonic() - started
    probs = {split: predict_proba(result.model, dataset.images, dataset.rows(split)) for split in ("val", "test")}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "model"
        card = {"name": f"generalization {lever} seed {seed}", "task": dataset.task,
                "classes": list(dataset.class_names)}
        export_model(assemble([result.model], [1.0], dataset.image_size), model_dir, card)
        archive = archive_probs(model_dir, Path(scratch) / "eval")
    np.savez(folder / "probs.npz", val=probs["val"], test=probs["test"], archive=archive["probs"],
             archive_ids=np.array(archive["ids"]))
    record = {"lever": lever, "seed": seed, "epochs": len(result.history), "best_epoch": result.best_epoch,
              "seconds": round(seconds, 1), "learning_rates": [r.get("learning_rate") for r in result.history]}
    write_result(folder / "result.json", record)
    return record


def archive_probs(model_dir: Path, out: Path) -> dict:
    """The product's own external evaluation of the model on the archive, as per-image probabilities."""
    from automl.evaluate import evaluate_model

    evaluate_model(model_dir, ARCHIVE, out=out, rounds=10)
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    table = table[table["error"] == ""] if "error" in table else table
    columns = [c for c in table.columns if c.startswith("p_")]
    return {"ids": table["image_id"].astype(str).tolist(), "probs": table[columns].to_numpy(float)}


def scores(y_test, test, archive_labels, archive, classes) -> dict:
    """The table's figures for one model's probabilities (test split, archive)."""
    from sklearn.metrics import roc_auc_score

    from automl.metrics import calibration_metrics, classification_metrics, sensitivity_at_specificity

    out = {}
    metrics = classification_metrics(y_test, test, classes)
    out["test_balanced_accuracy"], out["test_auc"] = metrics["balanced_accuracy"], metrics["auc"]
    out["test_ece"] = calibration_metrics(y_test, test)["ece"]
    mel = archive_labels == "mel"
    malignant_score = archive[:, [classes.index(c) for c in MALIGNANT]].sum(axis=1)
    out["archive_melanoma_auc"] = roc_auc_score(mel, archive[:, classes.index("mel")])
    out["archive_malignant_auc"] = roc_auc_score(mel, malignant_score)  # every malignant archive image is mel
    out["archive_sens_at_spec_0.8"] = sensitivity_at_specificity(mel, archive[:, classes.index("mel")], 0.8)[
        "sensitivity"]
    return out


def summarise(folder: Path, levers: list[str], seeds: list[int], data_dir: Path) -> dict:
    from automl.data import load_dataset

    spec = load_spec(RunLayout(REFERENCE).spec)
    dataset = load_dataset(data_dir, **spec.data.dataset_args())
    classes = list(dataset.class_names)
    y_val, y_test = dataset.labels("val"), dataset.labels("test")
    labels = pd.read_csv(ARCHIVE / "labels.csv").set_index("image_id")["dx"]
    runs = {}
    for lever in levers:
        for seed in seeds:
            path = folder / f"{lever}-s{seed}" / "probs.npz"
            if path.is_file():
                with np.load(path) as data:
                    runs[lever, seed] = {k: data[k] for k in data.files}
    add_posthoc(runs, seeds, dataset, y_val)
    rows, rng = {}, np.random.default_rng(0)
    for lever in [*levers, *POSTHOC]:
        mine = [s for s in seeds if (lever, s) in runs]
        if not mine:
            continue
        per_seed = []
        for seed in mine:
            run = runs[lever, seed]
            archive_labels = labels.loc[run["archive_ids"]].to_numpy()
            figures = scores(y_test, run["test"], archive_labels, run["archive"], classes)
            figures["test_accuracy"] = float(np.mean(run["test"].argmax(axis=1) == y_test))
            from automl.objective import Objective

            figures["val_balanced_accuracy"] = Objective().score(y_val, run["val"])
            per_seed.append(figures)
        rows[lever] = {"seeds": mine, **{k: float(np.mean([f[k] for f in per_seed])) for k in per_seed[0]},
                       "per_seed": per_seed}
        if lever == "refit":  # val was trained on: its score says nothing
            rows[lever]["val_balanced_accuracy"] = float("nan")
        if lever != "baseline" and all(("baseline", s) in runs for s in mine):
            rows[lever]["difference_ci95"] = paired_differences(runs, lever, mine, y_test, labels, classes, rng)
    return rows


#: Post-hoc levers, measured on the baseline runs' own probabilities (fitted on validation only).
POSTHOC = ("baseline+temperature", "baseline+prior")


def add_posthoc(runs: dict, seeds: list[int], dataset, y_val) -> None:
    """Temperature (fitted on val) and the prior decision rule applied to each baseline run's probabilities."""
    from automl.posthoc import apply_temperature, correct_prior, fit_temperature, prior_factor
    from automl.trial import expected_class_mix

    params = member_params()
    counts = dataset.class_counts("train")
    factor = prior_factor(counts / counts.sum(), expected_class_mix(counts, params["imbalance"],
                                                                   params.get("oversample_to", 0)))
    for seed in seeds:
        if ("baseline", seed) not in runs:
            continue
        base = runs["baseline", seed]
        temperature = fit_temperature(base["val"], y_val)
        runs["baseline+temperature", seed] = {k: apply_temperature(v, temperature) if k != "archive_ids" else v
                                              for k, v in base.items()} | {"temperature": temperature}
        runs["baseline+prior", seed] = {k: correct_prior(v, factor) if k != "archive_ids" else v
                                        for k, v in base.items()}


def paired_differences(runs, lever, seeds, y_test, labels, classes, rng, rounds: int = 1000) -> dict:
    """95% intervals of (lever - baseline), seeds averaged, resampling the same images for both."""
    from sklearn.metrics import roc_auc_score

    from automl.objective import Objective

    def averaged(name, part):
        return np.mean([runs[name, s][part] for s in seeds], axis=0)

    test_l, test_b = averaged(lever, "test"), averaged("baseline", "test")
    ids = runs["baseline", seeds[0]]["archive_ids"]
    arch_l, arch_b = averaged(lever, "archive"), averaged("baseline", "archive")
    mel = labels.loc[ids].to_numpy() == "mel"
    k = classes.index("mel")
    balanced, auc = Objective(), Objective.of("val_auc")
    diffs = {"test_balanced_accuracy": [], "test_auc": [], "archive_melanoma_auc": []}

    def gap(metric, truth, mine, base):
        return metric(truth, mine) - metric(truth, base)

    for _ in range(rounds):
        t = rng.integers(0, len(y_test), len(y_test))
        a = rng.integers(0, len(mel), len(mel))
        diffs["test_balanced_accuracy"].append(gap(balanced.score, y_test[t], test_l[t], test_b[t]))
        diffs["test_auc"].append(gap(auc.score, y_test[t], test_l[t], test_b[t]))
        if mel[a].any() and not mel[a].all():
            diffs["archive_melanoma_auc"].append(gap(roc_auc_score, mel[a], arch_l[a, k], arch_b[a, k]))
    return {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for name, v in diffs.items()}


def markdown(rows: dict) -> str:
    columns = ["val_balanced_accuracy", "test_balanced_accuracy", "test_accuracy", "test_auc", "test_ece",
               "archive_melanoma_auc",
               "archive_malignant_auc", "archive_sens_at_spec_0.8"]
    lines = ["| lever | seeds | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "| --- | --- |" + " ---: |" * len(columns)]
    for lever, row in rows.items():
        ci = row.get("difference_ci95", {})
        cells = [f"{row[c]:.3f}" + (f" (Δ [{ci[c][0]:+.3f}, {ci[c][1]:+.3f}])" if c in ci else "") for c in columns]
        lines.append(f"| {lever} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    folder = args.out / RUNS / "generalization"
    if not args.summary_only:
        from automl.console import import_tensorflow_quietly

        import_tensorflow_quietly()
        for lever in args.levers:
            for seed in args.seeds:
                part = folder / f"{lever}-s{seed}"
                if (part / "result.json").is_file():
                    continue
                part.mkdir(parents=True, exist_ok=True)
                console.info(f"training {lever} seed {seed}")
                record = train_one(lever, seed, args.data, part)
                console.info(f"{lever} seed {seed}: {record['epochs']} epochs in {record['seconds']:.0f}s")
    rows = summarise(folder, list(LEVERS), args.seeds, args.data)
    text = markdown(rows)
    print(text)
    write_result(args.out / "generalization.json", {"member": MEMBER, "levers": LEVERS, "rows": rows})
    (args.out / "generalization.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
