"""Side analysis, not part of the product: the official-split ensemble with a Bayes prior correction.

    python benchmarks/prior_correction.py [RUN_DIR] [--data ../shared/data/ham10000_28]

Every member was trained on a re-balanced class mix (oversampling to ``oversample_to`` per class, or
class weights, which make the effective mix uniform), so its probabilities answer "which class, if the
classes were that mix?". MedMNIST's table scores plain accuracy on the natural mix (nv 67%). The
correction (Saerens et al., Neural Computation 2002) multiplies each member's probabilities by
train prior / effective training mix and renormalises, before the ensemble's own weights average
them. Nothing is fitted or chosen on validation or test: the factors follow from the training
split's class counts and each member's imbalance setting. The product now does this itself:
``automl ensemble NAME --decision prior`` (and ``automl run --decision prior``) applies the same correction
(``automl.posthoc.correct_prior`` with ``automl.trial.expected_class_mix``) in the report and inside the
exported graph; this script stays as the side analysis that compares both rules with intervals.
Needs the retrained members' probabilities
(``RUN_DIR/retrain/members/`` and ``RUN_DIR/retrain/labels.npz``, kept local) and writes
``RUN_DIR/prior_correction.md``. RUN_DIR defaults to ``results/reference-official-split``.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from automl.ensemble import bootstrap_ci
from automl.layout import RunLayout
from automl.metrics import HEADLINE, classification_metrics
from automl.posthoc import correct_prior, prior_factor
from automl.trial import expected_class_mix

# Defaults from this file, not the working directory, so the script runs from anywhere in the checkout.
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", default=REPO / "results" / "reference-official-split")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ham10000_28")
    args = parser.parse_args()
    run = RunLayout(args.run)
    info, summary = run.read_info(required=True), run.read_ensemble()
    classes = tuple(summary["classes"])
    split = pd.read_csv(args.data / "dermamnist_split.csv").merge(
        pd.read_csv(args.data / "HAM10000_metadata.csv"), on="image_id")
    counts = split[split["split"] == "train"]["dx"].value_counts().reindex(classes).to_numpy(dtype=float)
    prior = counts / counts.sum()
    members = run.read_members().set_index("member_id")
    labels = run.read_labels()

    rows = []
    for part, y in (("val", labels["y_val"]), ("test", labels["y_test"])):
        as_trained, corrected = 0.0, 0.0
        for member, weight in summary["weights"].items():
            if not weight:
                continue
            probs = run.read_member_probs(member, part)
            mix = expected_class_mix(counts, members.loc[member, "hp_imbalance"],
                                     int(members.loc[member, "hp_oversample_to"]))
            as_trained = as_trained + weight * probs
            corrected = corrected + weight * correct_prior(probs, prior_factor(prior, mix))
        for label, probs in (("as trained (shipped)", as_trained), ("prior-corrected", corrected)):
            metrics = classification_metrics(y, probs, classes)
            ci = bootstrap_ci(y, probs, classes, rounds=1000, seed=0) if part == "test" else {}
            cells = [f"{metrics[m]:.3f}" + (f" [{ci[m][0]:.3f}, {ci[m][1]:.3f}]" if m in ci else "")
                     for m in HEADLINE]
            share = float(np.mean(probs.argmax(axis=1) == classes.index("nv")))
            rows.append(f"| {part} | {label} | {' | '.join(cells)} | {share:.2f} |")

    text = "\n".join([
        f"# {info['name']}: greedy ensemble with a Bayes prior correction (side analysis)",
        "",
        f"Split: {summary['split']}. Ensemble weights as chosen on validation: "
        + ", ".join(f"{m} {w:.2f}" for m, w in summary["weights"].items() if w) + ".",
        "Training-split class prior: " + ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, prior)) + ".",
        "",
        "| split | probabilities | balanced accuracy | macro-F1 | accuracy | AUC | share predicted nv |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        ("Brackets: 95% bootstrap intervals over test images. Made by `python benchmarks/prior_correction.py`; "
         "`automl ensemble --decision prior` ships the corrected rule."),
    ])
    (args.run / "prior_correction.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
