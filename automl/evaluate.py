"""``automl evaluate``: how an exported model holds up on a labelled image folder from somewhere else.

It measures and never chooses: nothing is fitted, selected or tuned on the folder. The folder holds images anywhere
below it and a labels CSV with ``image_id`` and ``dx`` (other columns are ignored): ``labels.csv``, the HAM10000
layout's ``HAM10000_metadata.csv``, or the file ``--labels`` names. A label is one of HAM10000's seven codes, or one
of :data:`OTHER_LABELS` (``benign_nos``: benign, type not given, as in the ISIC Archive); any other label is counted
and shown in the confusion matrix but enters no metric.

Output (``MODEL_DIR/evaluations/NAME/`` unless ``--out`` names another folder; paths in
:class:`automl.layout.EvaluationLayout`), written aside and swapped in whole:

- ``metrics.json``: images per label and what each label counts as; the multiclass metrics on the images whose label
  is one of the model's classes; melanoma-vs-rest and malignant-vs-benign ROC-AUC and sensitivity at fixed
  specificities; calibration (ECE over 15 bins, Brier score); the confusion matrix (every label by predicted class);
  the share of images predicted as each class. 95% intervals come from one image-level bootstrap (1000 seeded
  rounds; every metric sees the same resamples).
- ``report.md``, ``roc.png``, ``reliability.png``, and ``predictions.csv``: one row per labelled image file (its path
  relative to the data folder), unreadable files with their error.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from automl import console
from automl.data import (BINARY_CLASSES, DX_CLASSES, MALIGNANT, METADATA_FILE, read_image_table, scan_images,
                         skipped_line)
from automl.errors import DataError, UserError
from automl.files import atomic_write, check_output_dir, staged_dir, write_json
from automl.layout import EvaluationLayout, ModelLayout
from automl.metrics import (
    ECE_BINS,
    HEADLINE,
    SCORERS,
    bootstrap_intervals,
    brier_score,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    sensitivity_at_specificity,
)
from automl.objective import SPECIFICITIES, sensitivity_at
from automl.predict import classify_files, model_classes, probabilities

#: Labels files looked for in the data folder, in this order (``--labels`` names any other).
LABEL_FILES = ("labels.csv", METADATA_FILE)
REQUIRED_COLUMNS = ("image_id", "dx")
#: Labels known besides HAM10000's seven codes, and their side in malignant vs benign.
OTHER_LABELS = {"benign_nos": "benign", "benign": "benign", "malignant": "malignant"}
#: The yes/no questions every image with a known label answers.
QUESTIONS = ("melanoma", "malignant")
QUESTION_TEXT = {"melanoma": "melanoma vs rest", "malignant": "malignant vs benign"}
#: How a question's answers read in the tables: (negative, positive).
ANSWERS = {"melanoma": ("rest", "melanoma"), "malignant": ("benign", "malignant")}
MEASURES_ONLY = ("This set measures the model; it never chooses anything: no hyperparameter, threshold, temperature or "
                 "ensemble weight was fitted or selected on it.")


def evaluate_model(model_dir: str | Path, data_dir: str | Path, out: str | Path | None = None, name: str | None = None,
                   labels: str | Path | None = None, *, rounds: int = 1000, seed: int = 0,
                   batch_size: int = 64) -> dict:
    """Classify every labelled image of ``data_dir`` with the exported model and write the evaluation folder.

    ``out`` defaults to ``MODEL_DIR/evaluations/NAME``, ``name`` to the data folder's name, ``labels`` to the data
    folder's ``labels.csv`` or ``HAM10000_metadata.csv``. Bad input (not a model folder, no labels file, no ``image_id``
    or ``dx`` column, no labelled image found, an output folder that is not ours) is a :class:`UserError` before any
    image is classified. Returns what ``metrics.json`` holds.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    classes = model_classes(model_dir)
    _check_scorable(model_dir, classes)
    name = _evaluation_name(name, data_dir)
    target = EvaluationLayout(out) if out is not None else ModelLayout(model_dir).evaluation(name)
    check_output_dir(target.root)  # before the images are classified
    labels_file, table, missing, unlabelled, skipped = _read_labelled(data_dir, labels)
    if line := skipped_line(skipped):
        console.info(f"{data_dir}: {line}")
    predictions = classify_files(model_dir, list(table["path"]), batch_size)
    if len(predictions) != len(table):  # one row per path, and every labelled id has its own path
        raise AssertionError("predictions do not line up with the labels")
    predictions.insert(1, "dx", table["dx"].to_numpy())
    predictions["path"] = [os.path.relpath(p, data_dir) for p in table["path"]]
    readable = (predictions["error"] == "").to_numpy()
    if not readable.any():
        first = predictions.iloc[0]
        raise DataError(f"{data_dir}: none of the {len(predictions)} labelled images could be read "
                        f"(first: {first['path']}: {first['error']})")
    images = _Images.of(predictions["dx"].to_numpy()[readable], probabilities(predictions, classes)[readable], classes)
    results = {
        "name": name, "model": str(model_dir), "model_name": ModelLayout(model_dir).read_card().get("name"),
        "data": str(data_dir), "labels_file": str(labels_file), "classes": classes,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bootstrap": {"rounds": rounds, "seed": seed, "resampled": "images", "interval": "95% percentile"},
        "images": {"labelled": len(table) + len(missing), "found": len(table), "missing": len(missing),
                   "missing_first": missing[:10], "unlabelled_files": unlabelled,
                   "skipped_files": len(skipped), "skipped_first": [str(p) for p in list(skipped)[:10]],
                   "unreadable": int((~readable).sum()), "scored": int(readable.sum())},
        "labels": _label_counts(predictions, images),
        **_measure(images, rounds, seed),
    }
    _write(target, results, images, predictions)
    if out is None:  # an evaluation kept beside the model: its card says how the model held up
        from automl.export import record_evaluations

        record_evaluations(model_dir)
    _summary(target, results)
    return results


def _check_scorable(model_dir: Path, classes: list[str]) -> None:
    if classes != list(BINARY_CLASSES) and "mel" not in classes:
        raise UserError(f"{ModelLayout(model_dir).card_json}: classes {', '.join(classes)} have neither mel nor "
                        f"{' and '.join(BINARY_CLASSES)}; automl evaluate scores melanoma and malignancy")


def _evaluation_name(name: str | None, data_dir: Path) -> str:
    name = data_dir.resolve().name if name is None else name
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name:
        raise UserError(f"--name {name!r}: give a plain folder name (no slashes, not starting with a dot)")
    return name


def _read_labelled(data_dir: Path, labels: str | Path | None = None
                   ) -> tuple[Path, pd.DataFrame, list[str], int, dict[Path, str]]:
    """The labels file used, its rows that have an image file (``image_id, dx, path``; ``dx`` in lower case), the
    labelled ids without an image file, the number of image files without a label, and the files passed over with
    why (not an image format, or a second file of one image id; the labels file itself is not counted).
    """
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    path = _labels_file(data_dir, labels)
    table = read_image_table(path, REQUIRED_COLUMNS)[list(REQUIRED_COLUMNS)]
    table["dx"] = table["dx"].str.lower()
    scan = scan_images(data_dir)
    found, repeated = scan.by_id()
    skipped = {p: why for p, why in scan.others.items() if p.resolve() != path.resolve()} | repeated
    table["path"] = table["image_id"].map(found)
    if table["path"].isna().all():
        raise DataError(f"{path}: none of its {len(table)} image_ids has an image file below {data_dir} (looked for "
                        f"IMAGE_ID.jpg, .png, .tif or another image format, e.g. {table['image_id'].iloc[0]}.jpg; "
                        f"{len(found)} image files found there)")
    missing = table.loc[table["path"].isna(), "image_id"].tolist()
    unlabelled = len(set(found) - set(table["image_id"]))
    return path, table.dropna(subset=["path"]).reset_index(drop=True), missing, unlabelled, skipped


def _labels_file(data_dir: Path, labels: str | Path | None) -> Path:
    if labels is not None:
        if not Path(labels).is_file():
            raise DataError(f"{labels}: labels file not found (--labels names a CSV with image_id and dx columns)")
        return Path(labels)
    present = [data_dir / n for n in LABEL_FILES if (data_dir / n).is_file()]
    if not present:
        raise DataError(f"{data_dir}: no labels file: expected {' or '.join(LABEL_FILES)} with image_id and dx "
                        "columns; name another with --labels")
    if len(present) > 1:
        raise DataError(f"{data_dir}: holds both {' and '.join(p.name for p in present)}; choose one with --labels")
    return present[0]


def _label_side(label: str) -> str | None:
    """``malignant`` or ``benign`` for a known label (mel, bcc, akiec are malignant), ``None`` for an unknown one."""
    if label in DX_CLASSES:
        return BINARY_CLASSES[label in MALIGNANT]
    return OTHER_LABELS.get(label)


def _label_roles(label: str, classes: list[str]) -> dict:
    """What an image of ``label`` counts as: its model class in the multiclass metrics (``None``: not scored there),
    and per question 1 (positive), 0 (negative) or -1 (not scored).

    A benign-vs-malignant model scores every known label as its side; a model of dx codes the labels among its
    classes. A malignant lesion of unstated type (``malignant``) may be a melanoma: not scored in melanoma vs rest.
    """
    side = _label_side(label)
    as_class = side if classes == list(BINARY_CLASSES) else label
    return {"multiclass": as_class if as_class in classes else None,
            "malignant": -1 if side is None else int(side == "malignant"),
            "melanoma": 1 if label == "mel" else 0 if side is not None and label != "malignant" else -1}


@dataclass
class _Images:
    """The readable labelled images: their labels and probabilities, and what each counts as in each metric.

    ``target``: the model class each image is scored as in the multiclass metrics (-1: not scored). ``truth``: per
    question, 1 positive, 0 negative, -1 not scored. ``score``: per question, the model's score.
    """

    dx: np.ndarray
    probs: np.ndarray
    classes: list[str]
    target: np.ndarray
    truth: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    score_text: dict[str, str]

    @classmethod
    def of(cls, dx: np.ndarray, probs: np.ndarray, classes: list[str]) -> _Images:
        roles = {label: _label_roles(label, classes) for label in set(dx)}
        target = np.array([-1 if roles[d]["multiclass"] is None else classes.index(roles[d]["multiclass"])
                           for d in dx], dtype=int)
        truth = {q: np.array([roles[d][q] for d in dx], dtype=int) for q in QUESTIONS}
        if classes == list(BINARY_CLASSES):
            score = {"melanoma": probs[:, 1], "malignant": probs[:, 1]}
            text = {"melanoma": "p_malignant (the model has no melanoma output)", "malignant": "p_malignant"}
        else:
            malignant = [c for c in MALIGNANT if c in classes]
            score = {"melanoma": probs[:, classes.index("mel")],
                     "malignant": np.clip(probs[:, [classes.index(c) for c in malignant]].sum(axis=1), 0.0, 1.0)}
            text = {"melanoma": "p_mel", "malignant": " + ".join(f"p_{c}" for c in malignant)}
        return cls(dx, probs, classes, target, truth, score, text)


def _multiclass_scores(images: _Images, rows: np.ndarray) -> dict[str, float]:
    """The headline metrics, ECE (top class) and Brier score on the images of ``rows`` scored in the multiclass
    metrics."""
    keep = images.target[rows] >= 0
    y, probs = images.target[rows][keep], images.probs[rows][keep]
    if not len(y):
        return dict.fromkeys([*HEADLINE, "ece", "brier"], math.nan)
    labels, predicted = np.arange(probs.shape[1]), probs.argmax(axis=1)
    values = {name: SCORERS[name](y, predicted, probs, labels) for name in HEADLINE}
    values["ece"] = expected_calibration_error(predicted == y, probs.max(axis=1))
    values["brier"] = brier_score(y, probs)
    return values


def _question_scores(images: _Images, question: str, rows: np.ndarray) -> dict[str, float]:
    """ROC-AUC and sensitivity at fixed specificities of one question (and calibration of the malignant
    probability) on the images of ``rows`` scored in it."""
    keep = images.truth[question][rows] >= 0
    y, score = images.truth[question][rows][keep], images.score[question][rows][keep]
    values = {"auc": float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else math.nan}
    for specificity in SPECIFICITIES:
        values[sensitivity_at(specificity)] = sensitivity_at_specificity(y, score, specificity)["sensitivity"]
    if question == "malignant":
        values["ece"] = expected_calibration_error(y == 1, score) if len(y) else math.nan
        values["brier"] = float(brier_score_loss(y, score, pos_label=1)) if len(y) else math.nan
    return values


def _measure(images: _Images, rounds: int = 1000, seed: int = 0) -> dict:
    """Every metric of the evaluation with its 95% interval (the same image-level resamples for each section)."""
    n, every = len(images.dx), np.arange(len(images.dx))
    sections: dict[str, Callable[[np.ndarray], dict[str, float]]] = {
        "multiclass": lambda rows: _multiclass_scores(images, rows),
        **{q: (lambda rows, q=q: _question_scores(images, q, rows)) for q in QUESTIONS},
    }
    results = {name: {**statistic(every), "ci95": bootstrap_intervals(n, statistic, rounds, seed)}
               for name, statistic in sections.items()}
    results["multiclass"] |= _multiclass_details(images)
    for question in QUESTIONS:
        results[question] |= _question_details(images, question)
    results["confusion_matrix"] = _confusion(images)
    shares = np.bincount(images.probs.argmax(axis=1), minlength=len(images.classes)) / n
    results["predicted_share"] = dict(zip(images.classes, map(float, shares), strict=True))
    return results


def _multiclass_details(images: _Images) -> dict:
    """Which images and classes the multiclass metrics saw, per-class scores and the reliability bins."""
    scored = images.target >= 0
    y, probs = images.target[scored], images.probs[scored]
    present = sorted(set(y.tolist()))
    per_class = classification_metrics(y, probs, tuple(images.classes))["per_class"] if scored.any() else {}
    return {"images": int(scored.sum()), "classes_scored": [images.classes[k] for k in present],
            "per_class": {c: v for c, v in per_class.items() if images.classes.index(c) in present},
            "reliability": _bins(probs.argmax(axis=1) == y, probs.max(axis=1))}


def _question_details(images: _Images, question: str) -> dict:
    """The score used, which labels were positive and negative, the thresholds of the fixed specificities, and (for
    the malignant probability) the reliability bins."""
    truth, score = images.truth[question], images.score[question]
    scored = truth >= 0
    points = {f"{s:g}": sensitivity_at_specificity(truth[scored], score[scored], s) for s in SPECIFICITIES}
    details = {"score": images.score_text[question], "positives": int((truth == 1).sum()),
               "negatives": int((truth == 0).sum()), "positive_labels": _label_order(images.dx[truth == 1]),
               "negative_labels": _label_order(images.dx[truth == 0]),
               "operating_points": {s: {k: p[k] for k in ("threshold", "specificity")} for s, p in points.items()}}
    if question == "malignant":
        details["reliability"] = _bins(truth[scored] == 1, score[scored])
    return details


def _bins(hits: np.ndarray, confidence: np.ndarray) -> dict[str, list]:
    counts, mean_confidence, hit_rate = calibration_bins(hits, confidence)
    return {"bins": ECE_BINS, "images": counts.tolist(), "mean_confidence": mean_confidence.tolist(),
            "observed": hit_rate.tolist()}


def _label_order(labels) -> list[str]:
    known = [*DX_CLASSES, *OTHER_LABELS]
    return [c for c in known if c in set(labels)] + sorted(set(labels) - set(known))


def _confusion(images: _Images) -> dict:
    rows = _label_order(images.dx)
    predicted = np.array(images.classes, dtype=object)[images.probs.argmax(axis=1)]
    counts = pd.crosstab(pd.Series(images.dx, name="label"), pd.Series(predicted, name="predicted"))
    counts = counts.reindex(index=rows, columns=images.classes, fill_value=0)
    return {"rows": rows, "columns": list(images.classes), "counts": counts.to_numpy().tolist()}


def _label_counts(predictions: pd.DataFrame, images: _Images) -> dict:
    """Per label: images found, unreadable, scored, and what the label counts as in each metric."""
    counts = {}
    readable = predictions["error"] == ""
    for label in _label_order(predictions["dx"]):
        found, roles = predictions["dx"] == label, _label_roles(label, images.classes)
        counts[label] = {"images": int(found.sum()), "unreadable": int((found & ~readable).sum()),
                         "scored": int((images.dx == label).sum()), "multiclass": roles["multiclass"],
                         **{QUESTION_TEXT[q].replace(" ", "_"): None if roles[q] < 0 else ANSWERS[q][roles[q]]
                            for q in QUESTIONS}}
    return counts


def _write(target: EvaluationLayout, results: dict, images: _Images, predictions: pd.DataFrame) -> None:
    with staged_dir(target.root) as stage:
        staged = EvaluationLayout(stage)
        write_json(staged.metrics, results)
        atomic_write(staged.report, _report_markdown(results))
        buffer = io.StringIO()
        predictions.to_csv(buffer, index=False, float_format="%.6g")
        atomic_write(staged.predictions, buffer.getvalue())
        _plot_roc(images, results, staged.roc_png)
        _plot_reliability(results, staged.reliability_png)


def _summary(target: EvaluationLayout, results: dict) -> None:
    parts = []
    for question in QUESTIONS:
        section = results[question]
        parts.append(f"{QUESTION_TEXT[question]} AUC {_with_ci(section, 'auc')} ({section['score']})")
    console.info(f"{results['name']}: {results['images']['scored']} images scored; " + "; ".join(parts)
                 + f"; report: {target.report}")


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _with_ci(section: dict, key: str) -> str:
    low, high = section.get("ci95", {}).get(key, [math.nan, math.nan])
    if _fmt(section.get(key)) == "-" or _fmt(low) == "-":
        return _fmt(section.get(key))
    return f"{section[key]:.3f} [{low:.3f}, {high:.3f}]"


def _report_markdown(results: dict) -> str:
    """``report.md``: what was measured on which images, the tables, and how the numbers were made."""
    counts = results["images"]
    lines = [
        f"# External evaluation: {results['name']}", "", f"**{MEASURES_ONLY}**", "",
        f"- model: `{results['model']}` ({results.get('model_name') or 'unnamed'}), classes "
        f"{', '.join(results['classes'])}",
        f"- data: `{results['data']}`, labels from `{results['labels_file']}`",
        f"- images: {counts['scored']} scored of {counts['labelled']} labelled ({counts['missing']} without an image "
        f"file, {counts['unreadable']} unreadable; {counts['unlabelled_files']} image files without a label ignored)",
        f"- made {results['created']}; brackets are 95% intervals from {results['bootstrap']['rounds']} image-level "
        f"bootstrap rounds (seed {results['bootstrap']['seed']}), the same resamples for every metric",
        *_ham10000_caveat(results),
        "", *_binary_section(results), "", *_multiclass_section(results), "", *_labels_section(results), "",
        *_confusion_section(results), "", "## How the numbers were made", "", *_method_notes(results),
    ]
    return "\n".join(lines) + "\n"


def _ham10000_caveat(results: dict) -> list[str]:
    if Path(results["labels_file"]).name != METADATA_FILE:
        return []
    return ["", f"Labels from {METADATA_FILE}: these are HAM10000 images. A model trained on HAM10000 may have seen "
            "some of them in its training or validation split; those numbers then measure fit, not another site."]


def _binary_section(results: dict) -> list[str]:
    specs = [f"{s:g}" for s in SPECIFICITIES]
    lines = ["## Melanoma and malignancy", "",
             "| question | score | positives | negatives | ROC-AUC | "
             + " | ".join(f"sensitivity at specificity {s}" for s in specs) + " | ECE | Brier |",
             "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in specs) + " | ---: | ---: |"]
    for question in QUESTIONS:
        s = results[question]
        cells = [f"{_with_ci(s, sensitivity_at(float(v)))} (threshold {_fmt(s['operating_points'][v]['threshold'])})"
                 for v in specs]
        calibration = [_with_ci(s, k) if k in s else "-" for k in ("ece", "brier")]
        lines.append(f"| {QUESTION_TEXT[question]} | {s['score']} | {s['positives']} | {s['negatives']} | "
                     f"{_with_ci(s, 'auc')} | " + " | ".join([*cells, *calibration]) + " |")
    for question in QUESTIONS:
        positives, negatives = (", ".join(results[question][f"{k}_labels"]) or "none" for k in ("positive", "negative"))
        lines += ["", f"{QUESTION_TEXT[question].capitalize()}: positives {positives}; negatives {negatives}."]
    lines += ["", "Sensitivity at a fixed specificity: the threshold is the score that this set's own negatives "
              "(benign images; for melanoma vs rest, every non-melanoma image) put at that specificity (their "
              "quantile); an image above it is called positive. These thresholds describe points on this set's ROC "
              "curve and are not for use: a threshold to deploy is chosen on the training data's validation split."]
    return lines


def _multiclass_section(results: dict) -> list[str]:
    m = results["multiclass"]
    names = [{"macro_f1": "macro-F1", "auc": "AUC (macro one-vs-rest)"}.get(n, n.replace("_", " ")) for n in HEADLINE]
    lines = ["## The model's classes", ""]
    if not m["images"]:
        return [*lines, "No image has a label among the model's classes: no multiclass metric."]
    lines += [f"On the {m['images']} images whose label is one of the model's classes; classes scored (present): "
              f"{', '.join(m['classes_scored'])}. Balanced accuracy and macro-F1 average over these classes only.", "",
              "| " + " | ".join([*names, "ECE (top class)", "Brier"]) + " |",
              "| " + " | ".join("---:" for _ in range(len(names) + 2)) + " |",
              "| " + " | ".join(_with_ci(m, k) for k in [*HEADLINE, "ece", "brier"]) + " |", "",
              "| class | precision | recall | F1 | images |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {c} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {r['support']} |"
              for c, r in m["per_class"].items()]
    return lines


def _labels_section(results: dict) -> list[str]:
    lines = ["## Images per label", "",
             "| label | images | unreadable | scored | multiclass metrics as | melanoma vs rest "
             "| malignant vs benign |",
             "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for label, c in results["labels"].items():
        answers = " | ".join(c[QUESTION_TEXT[q].replace(" ", "_")] or "not scored" for q in QUESTIONS)
        lines.append(f"| {label} | {c['images']} | {c['unreadable']} | {c['scored']} | "
                     f"{c['multiclass'] or 'not scored'} | {answers} |")
    unknown = [label for label in results["labels"] if _label_side(label) is None]
    if unknown:
        lines += ["", f"Unknown labels ({', '.join(unknown)}) enter no metric; they are counted here and in the "
                  "confusion matrix only."]
    if results["images"]["missing"]:
        lines += ["", f"{results['images']['missing']} labelled images have no image file (first: "
                  f"{', '.join(results['images']['missing_first'])})."]
    return lines


def _confusion_section(results: dict) -> list[str]:
    matrix, shares = results["confusion_matrix"], results["predicted_share"]
    lines = ["## Confusion matrix and predicted classes", "",
             "Rows: the label (including labels outside the model's classes); columns: the predicted class.", "",
             "| label \\ predicted | " + " | ".join(matrix["columns"]) + " |",
             "| --- | " + " | ".join("---:" for _ in matrix["columns"]) + " |"]
    lines += [f"| {row} | " + " | ".join(map(str, counts)) + " |"
              for row, counts in zip(matrix["rows"], matrix["counts"], strict=True)]
    lines += ["| share predicted | " + " | ".join(f"{shares[c]:.1%}" for c in matrix["columns"]) + " |"]
    return lines


def _method_notes(results: dict) -> list[str]:
    binary = results["classes"] == list(BINARY_CLASSES)
    return [
        f"- {MEASURES_ONLY}",
        "- Multiclass metrics: " + ("a benign-vs-malignant model scores every image with a known label as its side."
                                    if binary else "only the images whose label is one of the model's classes."),
        "- Melanoma vs rest: score " + results["melanoma"]["score"] + ("; a benign-vs-malignant model has no melanoma "
                                                                      "output, so its malignant probability stands in"
                                                                      if binary else "") + ".",
        f"- Malignant vs benign: score {results['malignant']['score']}; malignant = {', '.join(MALIGNANT)}, every "
        "other known label (benign_nos too) benign.",
        f"- ECE: {ECE_BINS} equal-width bins, sum of (images in bin / images) x |observed - mean probability|; for the "
        "model's classes the top class's probability against whether it was right, for malignant vs benign the "
        "malignant probability against whether the image is malignant. Brier score: for the model's classes the "
        "multi-category form (squared distance of the probability vector from the one-hot label, 0 to 2), for "
        "malignant vs benign mean((p - y)^2) (0 to 1).",
        "- Intervals: image-level bootstrap; a metric undefined in a resample (e.g. an AUC without positives) is "
        "left out of that resample's percentiles.",
    ]


def _plot_roc(images: _Images, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for question, colour in zip(QUESTIONS, ("tab:purple", "tab:red"), strict=True):
        truth, score = images.truth[question], images.score[question]
        scored = truth >= 0
        if not 0 < truth[scored].sum() < scored.sum():
            continue
        fpr, tpr, _ = roc_curve(truth[scored], score[scored])
        section = results[question]
        ax.plot(fpr, tpr, color=colour,
                label=f"{QUESTION_TEXT[question]}: {section['score']} (AUC {_with_ci(section, 'auc')})")
        for s in SPECIFICITIES:
            point = section["operating_points"][f"{s:g}"]
            ax.plot(1 - point["specificity"], section[sensitivity_at(s)], "o", color=colour, markersize=4)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{results['name']} (dots: specificity {', '.join(f'{s:g}' for s in SPECIFICITIES)})", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_reliability(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("multiclass", "model's classes: top class", "probability of the top class", "share right"),
              ("malignant", f"malignant vs benign: {results['malignant']['score']}", "malignant probability",
               "share malignant")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (key, title, xlabel, ylabel) in zip(axes, panels, strict=True):
        section = results[key]
        bins = section.get("reliability") or {}
        counts = np.asarray(bins.get("images", []))
        if counts.sum():
            edges = np.linspace(0, 1, ECE_BINS + 1)
            observed = np.nan_to_num(np.asarray(bins["observed"], dtype=float))
            ax.bar(edges[:-1], observed, width=1 / ECE_BINS, align="edge", edgecolor="black", alpha=0.7,
                   label="observed")
            confidence = np.asarray(bins["mean_confidence"], dtype=float)
            ax.plot(confidence, np.where(counts > 0, confidence, np.nan), "k.", label="mean probability")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel=ylabel)
        ax.set_title(f"{title}\nECE {_with_ci(section, 'ece')}, Brier {_with_ci(section, 'brier')}, "
                     f"{int(counts.sum())} images", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
