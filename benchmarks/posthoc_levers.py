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
from generalization import ARCHIVE, scores  # noqa: E402

from automl import console  # noqa: E402
from automl.layout import RunFolderError, RunLayout  # noqa: E402
from automl.objective import Objective  # noqa: E402


def archive_images(archive: Path) -> tuple[list[str], list[np.ndarray]]:
    """The archive's labelled images, decoded once as ``automl predict`` decodes files (unreadable ones left out)."""
    from automl.data import decode_image

    labels = pd.read_csv(archive / "labels.csv")
    files = {p.stem: p for p in (archive / "images").iterdir()}
    ids, images = [], []
    for image_id in labels["image_id"].astype(str):
        if image_id in files:
            try:
                images.append(decode_image(files[image_id]))
                ids.append(image_id)
            except ValueError:
                pass
    return ids, images


def predict(model, images: list[np.ndarray] | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The graph's probabilities, a batch of same-sized images at a time (the graph resizes a whole batch)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        shapes = {image.shape for image in batch}
        if len(shapes) == 1:
            out.append(model(np.stack(batch), training=False).numpy())
        else:
            out.append(np.concatenate([model(image[None], training=False).numpy() for image in batch]))
    return np.concatenate(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder with retrain/ and ensemble/")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds of the paired differences")
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from automl.data import load_dataset
    from automl.export import assemble_run
    from automl.metrics import calibration_metrics
    from automl.posthoc import apply_temperature, fit_temperature, tta_modes
    from automl.spec import load_spec
    from automl.trial import configure_tensorflow

    configure_tensorflow(2)
    run = RunLayout(args.run)
    spec, summary = load_spec(run.spec), run.read_ensemble()
    dataset = load_dataset(args.data, **spec.data.dataset_args())
    classes = list(dataset.class_names)
    (x_val, y_val), (x_test, y_test) = dataset.subset("val"), dataset.subset("test")
    ids, images = archive_images(args.archive)
    archive_labels = pd.read_csv(args.archive / "labels.csv").astype({"image_id": str}).set_index("image_id")[
        "dx"].loc[ids].to_numpy()
    console.info(f"{run.name}: ensemble {summary['method']} (TTA {summary.get('tta')}, decision "
                 f"{summary.get('decision')}); {len(y_test)} test images, {len(ids)} archive images")

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
            raw[tta, decision] = {"val": predict(model, x_val), "test": predict(model, x_test),
                                  "archive": predict(model, images)}
        probs = raw[tta, decision]
        temperature = fit_temperature(probs["val"], y_val) if calibrate else 1.0
        probs = {split: apply_temperature(p, temperature) for split, p in probs.items()}
        figures = scores(y_test, probs["test"], archive_labels, probs["archive"], classes)
        figures |= {"val_balanced_accuracy": Objective().score(y_val, probs["val"]),
                    "val_log_loss": calibration_metrics(y_val, probs["val"])["loss"],
                    "test_accuracy": float(np.mean(probs["test"].argmax(axis=1) == y_test)),
                    "temperature": temperature}
        rows[name] = {"tta": tta, "decision": decision, **figures, "probs": probs}
    shipped = f"tta={shipped_tta}"
    rng, mel, k = np.random.default_rng(0), archive_labels == "mel", classes.index("mel")
    balanced = Objective()
    for name, row in rows.items():
        if name == shipped:
            continue
        mine, base = row["probs"], rows[shipped]["probs"]
        diffs = {"test_balanced_accuracy": [], "archive_melanoma_auc": []}
        for _ in range(args.rounds):
            t = rng.integers(0, len(y_test), len(y_test))
            a = rng.integers(0, len(mel), len(mel))
            diffs["test_balanced_accuracy"].append(balanced.score(y_test[t], mine["test"][t])
                                                   - balanced.score(y_test[t], base["test"][t]))
            diffs["archive_melanoma_auc"].append(roc_auc_score(mel[a], mine["archive"][a, k])
                                                 - roc_auc_score(mel[a], base["archive"][a, k]))
        row["difference_ci95"] = {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                                  for m, v in diffs.items()}
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
