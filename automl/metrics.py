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

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from automl.objective import HEADLINE

__all__ = ["HEADLINE", "SCORERS", "classification_metrics", "metric_value", "prefixed"]


def _balanced_accuracy(y_true, y_pred, probs, labels) -> float:
    with warnings.catch_warnings():
        # A class the model predicts but the split lacks is expected on small splits and resamples.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # Mean recall over the classes present in this split (sklearn's definition).
        return float(balanced_accuracy_score(y_true, y_pred))


def _log_loss(y_true, y_pred, probs, labels) -> float:
    clipped = np.clip(probs, 1e-7, 1.0)
    return float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels))


#: How each metric of :data:`automl.objective.DIRECTIONS` is computed from (y_true, y_pred, probs, labels).
SCORERS = {
    "balanced_accuracy": _balanced_accuracy,
    "macro_f1": lambda y, p, probs, labels: float(
        f1_score(y, p, labels=labels[np.isin(labels, y)], average="macro", zero_division=0)),
    "accuracy": lambda y, p, probs, labels: float(accuracy_score(y, p)),
    "auc": lambda y, p, probs, labels: _macro_auc(y, probs, labels),
    "loss": _log_loss,
}


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
        return float(roc_auc_score(y_true, probs[:, 1])) if len(np.unique(y_true)) == 2 else float("nan")
    aucs = [
        roc_auc_score(y_true == k, probs[:, k]) for k in labels if 0 < (y_true == k).sum() < len(y_true)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def prefixed(metrics: dict, prefix: str) -> dict:
    """The scalar metrics with a split prefix, e.g. ``val_balanced_accuracy``."""
    return {f"{prefix}_{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
