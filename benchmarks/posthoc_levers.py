"""The post-hoc levers (TTA, temperature, decision rule) one at a time on a run's shipped ensemble.

The ensemble stage chooses the TTA mode and the temperature on validation and takes the decision rule
from the user; this measures each of them apart, on the lesion-grouped test split and on
``isic_archive_150`` (other clinics: measured, never used to choose anything). Every row runs the
product's own graph (:func:`automl.export.assemble_run`): the same members and weights, with one lever
changed, over the test images and over the archive's files decoded as ``automl predict`` decodes them.
Every row keeps the shipped members and weights (the ensemble stage fits its greedy weights per TTA
mode, so its own per-mode validation scores in ``ensemble.json`` differ). A row's temperature is fitted
on that row's validation probabilities, as the ensemble stage does::

    python benchmarks/posthoc_levers.py --run results/reference-mixed

Rows: ``tta=MODE`` for every mode (balanced decision, its own temperature), ``no temperature`` (the
shipped TTA, T = 1), ``decision=prior`` (the shipped TTA, its own temperature). Δ is the paired 95%
bootstrap interval of (row - shipped) on the same images. Written to ``results/benchmarks/`` as
``posthoc_levers-RUN.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, DEFAULT_OUT, write_result  # noqa: E402
from generalization import ARCHIVE, paired_differences, scores  # noqa: E402

from automl import console  # noqa: E402
from automl.layout import RunFolderError, RunLayout  # noqa: E402
from automl.objective import Objective  # noqa: E402


def archive_probs(model, files: list[Path], classes: list[str], labelled) -> tuple[np.ndarray, np.ndarray]:
    """The graph's probabilities on the archive's labelled, readable files, classified as ``automl predict`` does
    (:func:`automl.predict.classify_with`), and their image ids."""
    from automl.predict import classify_with, probabilities

    table = classify_with(model, files, classes)
    table = table[(table["error"] == "") & table["image_id"].isin(labelled)]
    return probabilities(table, classes), table["image_id"].to_numpy()


def predict(model, dataset, split: str) -> np.ndarray:
    """The graph's probabilities on a split's images (all of one size), gathered batch by batch."""
    from automl.trial import gathered

    return np.concatenate([model(batch, training=False).numpy()
                           for batch in gathered(dataset.images, dataset.rows(split))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder with retrain/ and ensemble/")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds of the paired differences")
    args = parser.parse_args()

    from automl.data import load_dataset
    from automl.export import assemble_run
    from automl.metrics import calibration_metrics
    from automl.posthoc import apply_temperature, fit_temperature, tta_modes
    from automl.predict import collect_inputs
    from automl.spec import load_spec
    from automl.trial import configure_tensorflow

    configure_tensorflow(2)
    run = RunLayout(args.run)
    spec, summary = load_spec(run.spec), run.read_ensemble()
    dataset = load_dataset(args.data, **spec.data.dataset_args())
    classes = list(dataset.class_names)
    y_val, y_test = dataset.labels("val"), dataset.labels("test")
    labels = pd.read_csv(args.archive / "labels.csv").astype({"image_id": str}).set_index("image_id")["dx"]
    files = collect_inputs([args.archive / "images"])
    console.info(f"{run.name}: ensemble {summary['method']} (TTA {summary.get('tta')}, decision "
                 f"{summary.get('decision')}); {len(y_test)} test images, {len(files)} archive files")

    shipped_tta = summary.get("tta", "none")
    variants = {f"tta={mode}": (mode, "balanced", True) for mode in tta_modes(dataset.image_size)}
    variants["no temperature"] = (shipped_tta, "balanced", False)
    variants["decision=prior"] = (shipped_tta, "prior", True)
    raw: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    rows = {}
    for name, (tta, decision, calibrate) in variants.items():
        if (tta, decision) not in raw:
            console.info(f"predicting with TTA {tta}, decision {decision}")
            try:
                model, _ = assemble_run(run, tta=tta, decision=decision, temperature=1.0)
            except RunFolderError as exc:  # members retrained before the prior correction existed
                console.info(f"{name}: left out ({exc})")
                continue
            archive, ids = archive_probs(model, files, classes, labels.index)
            raw[tta, decision] = {"val": predict(model, dataset, "val"), "test": predict(model, dataset, "test"),
                                  "archive": archive,
                                  "archive_ids": ids}
        probs = dict(raw[tta, decision])
        temperature = fit_temperature(probs["val"], y_val) if calibrate else 1.0
        probs |= {split: apply_temperature(probs[split], temperature) for split in ("val", "test", "archive")}
        figures = scores(y_test, probs["test"], labels.loc[probs["archive_ids"]].to_numpy(), probs["archive"],
                         classes)
        figures |= {"val_balanced_accuracy": Objective().score(y_val, probs["val"]),
                    "val_log_loss": calibration_metrics(y_val, probs["val"])["loss"],
                    "test_accuracy": float(np.mean(probs["test"].argmax(axis=1) == y_test)),
                    "temperature": temperature}
        rows[name] = {"tta": tta, "decision": decision, **figures, "probs": probs}
    shipped = f"tta={shipped_tta}"
    rng = np.random.default_rng(0)
    for name, row in rows.items():
        if name != shipped:  # the shipped row is the baseline of generalization.py's paired differences
            runs = {("baseline", 0): rows[shipped]["probs"], (name, 0): row["probs"]}
            row["difference_ci95"] = paired_differences(runs, name, [0], y_test, labels, classes, rng, args.rounds)
    for row in rows.values():
        row.pop("probs")
    columns = ["val_balanced_accuracy", "val_log_loss", "temperature", "test_balanced_accuracy", "test_accuracy",
               "test_auc", "test_ece", "archive_melanoma_auc", "archive_malignant_auc", "archive_sens_at_spec_0.8"]
    lines = [f"Post-hoc levers on `{run.root.name}`'s ensemble (shipped: TTA {shipped_tta}, chosen on validation), its "
             "members and weights fixed. Δ: paired 95% bootstrap interval of (row - shipped).", "",
             "| row | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for name, row in rows.items():
        ci = row.get("difference_ci95", {})
        cells = [f"{row[c]:.3f}" + (f" (Δ [{ci[c][0]:+.3f}, {ci[c][1]:+.3f}])" if c in ci else "") for c in columns]
        lines.append(f"| {name}{' (shipped)' if name == shipped else ''} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / f"posthoc_levers-{run.root.name}.json", {"run": run.root.name, "rows": rows})
    (args.out / f"posthoc_levers-{run.root.name}.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
