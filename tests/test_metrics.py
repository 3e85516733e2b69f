import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from automl.metrics import classification_metrics, headline_metrics

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def test_multiclass_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    probs = rng.dirichlet(np.ones(7), 500)
    probs[np.arange(250), y[:250]] += 1.0  # half the rows predicted right
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    m = classification_metrics(y, probs, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert m["per_class"]["mel"]["support"] == int((y == 4).sum())
    assert np.mean([c["recall"] for c in m["per_class"].values()]) == pytest.approx(m["balanced_accuracy"])


def test_binary_sensitivity_specificity_auc():
    y = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), ("benign", "malignant"))
    assert m["sensitivity"] == 0.5 and m["specificity"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))


def test_classes_missing_from_a_split_do_not_crash():
    y = np.array([0, 1, 1])
    probs = np.eye(7)[[0, 1, 2]]
    m = classification_metrics(y, probs, CLASSES)
    assert m["per_class"]["vasc"]["support"] == 0
    assert np.isfinite(m["auc"])


@settings(max_examples=200, deadline=None)
@given(n_classes=st.integers(2, 7), n=st.integers(2, 60), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans())
def test_headline_metrics_are_scikit_learns_on_any_resample(n_classes, n, seed, ties):
    """The numpy headline metrics (what every bootstrap round computes) against scikit-learn's definitions, on small
    samples where classes go missing from y_true or from the predictions, and with tied scores."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    probs = rng.dirichlet(np.ones(n_classes), n)
    if ties:
        probs = np.round(probs, 1) + 1e-9  # many equal scores
        probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    m = headline_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes predicted but absent
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    if n_classes == 2:
        expected = roc_auc_score(y, probs[:, 1]) if len(present) == 2 else np.nan
    else:
        aucs = [roc_auc_score(y == k, probs[:, k]) for k in range(n_classes) if 0 < (y == k).sum() < n]
        expected = np.mean(aucs) if aucs else np.nan
    assert m["auc"] == pytest.approx(expected, nan_ok=True)
