"""Classification metrics on one split, from labels and predicted class probabilities.

Balanced accuracy (mean per-class recall) is ISIC 2018's ranking metric and the default search
objective; plain accuracy rewards predicting nv (67% of HAM10000) and is reported for comparison.

>>> import numpy as np
>>> m = classification_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]),
...                            ("benign", "malignant"))
>>> round(m["balanced_accuracy"], 3), m["sensitivity"], m["specificity"]
(0.75, 0.5, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

from automl.objective import HEADLINE

__all__ = ["ECE_BINS", "HEADLINE", "SCORERS", "bootstrap_intervals", "brier_score", "calibration_bins",
           "calibration_metrics", "classification_metrics", "expected_calibration_error", "headline_metrics",
           "metric_value", "prefixed",
           "sensitivity_at_specificity"]

#: Equal-width confidence bins of the expected calibration error and the reliability diagrams.
ECE_BINS = 15


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows true and columns predicted, for integer labels in ``range(n_classes)``."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


# The headline metrics from one confusion matrix and ranks, in numpy: sklearn's definitions (tested against it),
# without its input checks, which made a 1,000-round bootstrap of them cost a minute on a few hundred images.

def _balanced_accuracy(y_true, y_pred, probs, labels) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's balanced_accuracy_score)."""
    counts = _confusion(y_true, y_pred, len(labels))
    support = counts.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(counts)[present] / support[present]))


def _macro_f1(y_true, y_pred, probs, labels) -> float:
    """Mean F1 over the classes present in ``y_true``; a class never predicted right scores 0 (sklearn's
    f1_score(average="macro", zero_division=0) over those labels)."""
    counts = _confusion(y_true, y_pred, len(labels))
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    present = support > 0
    return float(np.mean(2 * np.diag(counts)[present] / (support + predicted)[present]))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic on average ranks (ties count half), as roc_auc_score computes it."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _log_loss(y_true, y_pred, probs, labels) -> float:
    clipped = np.clip(probs, 1e-7, 1.0)
    return float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels))


#: How each metric of :data:`automl.objective.DIRECTIONS` is computed from (y_true, y_pred, probs, labels).
SCORERS = {
    "balanced_accuracy": _balanced_accuracy,
    "macro_f1": _macro_f1,
    "accuracy": lambda y, p, probs, labels: float(np.mean(y == p)),
    "auc": lambda y, p, probs, labels: _macro_auc(y, probs, labels),
    "loss": _log_loss,
}


def headline_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The :data:`HEADLINE` metrics only (what a bootstrap resamples), cheaper than :func:`classification_metrics`."""
    labels, y_pred = np.arange(probs.shape[1]), probs.argmax(axis=1)
    return {name: SCORERS[name](y_true, y_pred, probs, labels) for name in HEADLINE}


def metric_value(name: str, y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """One metric of :data:`SCORERS` (cheaper than all of :func:`classification_metrics`)."""
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    return SCORERS[name](y_true, probs.argmax(axis=1), probs, np.arange(n_classes))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest ROC-AUC, log loss, per-class
    precision/recall/F1/support and the confusion matrix (rows true, columns predicted); for two
    classes also sensitivity, specificity (class 1 = positive) and AUC of class 1's probability.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.arange(len(class_names))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    metrics = {name: scorer(y_true, y_pred, probs, labels) for name, scorer in SCORERS.items()}
    metrics |= {
        "n": len(y_true),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if len(class_names) == 2:
        metrics["sensitivity"] = float(recall[1])
        metrics["specificity"] = float(recall[0])
    return metrics


def _macro_auc(y_true: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over classes that have both positives and negatives (NaN if none)."""
    if len(labels) == 2:
        return _binary_auc(y_true == 1, probs[:, 1]) if len(np.unique(y_true)) == 2 else float("nan")
    aucs = [_binary_auc(y_true == k, probs[:, k]) for k in labels if 0 < (y_true == k).sum() < len(y_true)]
    return float(np.mean(aucs)) if aucs else float("nan")


def prefixed(metrics: dict, prefix: str) -> dict:
    """The scalar metrics with a split prefix, e.g. ``val_balanced_accuracy``."""
    return {f"{prefix}_{k}": v for k, v in metrics.items() if isinstance(v, int | float)}


def bootstrap_intervals(n: int, statistics: Callable[[np.ndarray], dict[str, float]], rounds: int = 1000,
                        seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of ``statistics(rows)`` over image-level bootstrap resamples of ``n`` images.

    Each round draws ``n`` row indices with replacement from one seeded generator, so two calls with the same ``n``,
    ``rounds`` and ``seed`` see the same resamples. A value that is undefined in a resample (NaN, e.g. an AUC
    without positives) is left out of its percentiles; one never defined has the interval ``[nan, nan]``.
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, value in statistics(rng.integers(0, n, n)).items():
            draws.setdefault(name, []).append(value)
    intervals = {}
    for name, values in draws.items():
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        intervals[name] = ([float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values)
                           else [math.nan, math.nan])
    return intervals


def sensitivity_at_specificity(y_true: np.ndarray, score: np.ndarray, specificity: float) -> dict[str, float]:
    """Sensitivity at the threshold the negatives' scores give for a fixed specificity.

    The threshold is the smallest negative score with at least ``specificity`` of the negatives at or below it
    (their ``specificity`` quantile, numpy's ``inverted_cdf``); an image is called positive when its score is above
    it. Returns ``sensitivity``, ``threshold`` and the ``specificity`` reached (at least the one asked for, more with
    few negatives or ties); NaN without positives or negatives.

    >>> sensitivity_at_specificity(np.array([0, 0, 0, 0, 1, 1]), np.array([.1, .2, .3, .4, .25, .5]), 0.75)
    {'sensitivity': 0.5, 'threshold': 0.3, 'specificity': 0.75}
    """
    y_true, score = np.asarray(y_true).astype(bool), np.asarray(score, dtype=np.float64)
    negatives, positives = score[~y_true], score[y_true]
    if not len(negatives) or not len(positives):
        return dict.fromkeys(("sensitivity", "threshold", "specificity"), math.nan)
    threshold = float(np.quantile(negatives, specificity, method="inverted_cdf"))
    return {"sensitivity": float(np.mean(positives > threshold)), "threshold": threshold,
            "specificity": float(np.mean(negatives <= threshold))}


def calibration_bins(hits: np.ndarray, confidence: np.ndarray,
                     bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of ``confidence`` over [0, 1]: images, mean confidence, share of hits (NaN when empty).

    Bin ``b`` holds the confidences in [b/bins, (b+1)/bins); the last bin also holds 1.
    """
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    hits = np.asarray(hits, dtype=np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        hit_rate = np.bincount(index, weights=hits, minlength=bins) / counts
    return counts, mean_confidence, hit_rate


def expected_calibration_error(hits: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (images in bin / images) x |share of hits - mean confidence| (Naeini et al., 2015).

    For a multiclass model: hits = the top class is right, confidence = its probability (Guo et al., 2017). For a
    yes/no probability: hits = the image is positive, confidence = the probability. NaN without images.
    """
    counts, mean_confidence, hit_rate = calibration_bins(hits, confidence, bins)
    if not counts.sum():
        return math.nan
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(hit_rate[filled] - mean_confidence[filled])) / counts.sum())


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean over images of the squared distance between the probability vector and the one-hot label.

    Brier's (1950) multi-category form: 0 is perfect, 2 the worst; for two classes it is twice the
    yes/no form ``mean((p - y) ** 2)``. NaN without images.
    """
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    if not len(y_true):
        return math.nan
    return float(np.mean(np.sum((probs - np.eye(probs.shape[1])[y_true]) ** 2, axis=1)))


def calibration_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Top-label expected calibration error (:data:`ECE_BINS` bins), Brier score and log loss of probabilities (N, K).

    >>> round(calibration_metrics(np.array([0, 1]), np.array([[.9, .1], [.6, .4]]))["ece"], 6)  # (.1 + .6) / 2
    0.35
    """
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    hits = probs.argmax(axis=1) == y_true
    return {"ece": expected_calibration_error(hits, probs.max(axis=1)), "brier": brier_score(y_true, probs),
            "loss": metric_value("loss", y_true, probs, probs.shape[1])}
