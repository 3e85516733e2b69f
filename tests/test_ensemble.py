"""The ensemble report's numbers and text: bootstrap intervals, and the markdown tables ``report.md`` holds."""

from __future__ import annotations

import numpy as np
import pytest

from automl.ensemble import bootstrap_ci, report_markdown
from automl.metrics import HEADLINE, classification_metrics

CLASSES = ("bkl", "mel", "nv")


def predictions(n: int, seed: int = 0, skill: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the probabilities of a decent but imperfect classifier (about 80% right at skill 2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    logits = skill * np.eye(len(CLASSES))[y] + rng.normal(0, 1, (n, len(CLASSES)))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


@pytest.fixture(scope="module")
def small_and_large():
    """Intervals on 80 and on 2,000 images of the same classifier (computed once: each round is sklearn work)."""
    return {n: bootstrap_ci(*predictions(n), CLASSES, rounds=60, seed=0) for n in (80, 2000)}


def test_intervals_hold_the_point_estimate_and_are_probabilities(small_and_large):
    y, probs = predictions(80)
    point = classification_metrics(y, probs, CLASSES)
    ci = small_and_large[80]
    assert set(ci) == set(HEADLINE)
    for name in HEADLINE:
        low, high = ci[name]
        assert 0.0 <= low < high <= 1.0, name
        assert low <= point[name] <= high, name


def test_intervals_narrow_with_more_images(small_and_large):
    for name in HEADLINE:
        assert width(small_and_large[2000][name]) < width(small_and_large[80][name]) / 2, name


def test_intervals_are_reproducible_for_a_seed():
    y, probs = predictions(50)
    first = bootstrap_ci(y, probs, CLASSES, rounds=20, seed=7)
    assert bootstrap_ci(y, probs, CLASSES, rounds=20, seed=7) == first
    assert bootstrap_ci(y, probs, CLASSES, rounds=20, seed=8) != first


def build_report() -> tuple[str, dict]:
    """A two-member ensemble's report, with metrics computed from real predictions."""
    y_val, val = predictions(120, seed=1)
    y_test, test = predictions(150, seed=2)
    _, weak_test = predictions(150, seed=2, skill=0.5)
    _, weak_val = predictions(120, seed=1, skill=0.5)
    results = {
        "m01": {"val": classification_metrics(y_val, weak_val, CLASSES),
                "test": classification_metrics(y_test, weak_test, CLASSES)},
        "m02": {"val": classification_metrics(y_val, val, CLASSES),
                "test": classification_metrics(y_test, test, CLASSES),
                "test_ci95": {"balanced_accuracy": [0.61, 0.83]}},
        "ensemble": {"val": classification_metrics(y_val, (val + weak_val) / 2, CLASSES),
                     "test": classification_metrics(y_test, (test + weak_test) / 2, CLASSES),
                     "test_ci95": bootstrap_ci(y_test, (test + weak_test) / 2, CLASSES, rounds=10, seed=0)},
    }
    summary = {"method": "greedy", "members": ["m01", "m02"], "weights": {"m01": 0.25, "m02": 0.75},
               "best_member": "m02", "split": "lesion-grouped 70/15/15", "classes": list(CLASSES)}
    info = {"task": "multiclass", "image_size": [28, 28]}
    return report_markdown("tiny", info, summary, results), results


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first markdown table after ``heading``, as lists of stripped cells."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    # lines[start] is the header, lines[start + 1] the --- separator
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start + 2:end]]


def test_report_has_the_test_table_with_ensemble_members_weights_and_intervals():
    text, results = build_report()
    assert text.startswith("# tiny: ensemble report")
    rows = {row[0]: row for row in table_rows(text, "## Test split")}

    assert list(rows) == ["ensemble", "m01", "m02 (best member on val)"]
    assert rows["ensemble"][1] == "" and rows["m01"][1] == "0.25" and rows["m02 (best member on val)"][1] == "0.75"
    ens, ci = results["ensemble"]["test"], results["ensemble"]["test_ci95"]
    low, high = ci["balanced_accuracy"]
    assert rows["ensemble"][2] == f"{ens['balanced_accuracy']:.3f} [{low:.3f}, {high:.3f}]"
    assert rows["m01"][2] == f"{results['m01']['test']['balanced_accuracy']:.3f}"  # no interval: none computed
    assert rows["m02 (best member on val)"][2].endswith("[0.610, 0.830]")
    assert rows["m02 (best member on val)"][5] == f"{results['m02']['test']['auc']:.3f}"  # only given intervals
    assert f"best member {results['m02']['val']['balanced_accuracy']:.3f}" in text


def test_report_has_the_ensembles_per_class_table():
    text, results = build_report()
    rows = table_rows(text, "## Per class (ensemble, test)")

    assert [row[0] for row in rows] == list(CLASSES)
    for row in rows:
        expected = results["ensemble"]["test"]["per_class"][row[0]]
        assert row[1:] == [f"{expected['precision']:.2f}", f"{expected['recall']:.2f}", f"{expected['f1']:.2f}",
                           str(expected["support"])]
    assert sum(int(row[4]) for row in rows) == 150
