"""Ensembles of retrained members, chosen on validation probabilities only.

Three methods, each returning one weight per member (weights sum to 1):

``mean``
    the plain average of every member.
``weighted``
    members weighted by their validation score (the inverse for a loss), as seed 001 weighted its
    models by accuracy.
``greedy``
    Caruana et al. (ICML 2004) forward selection with replacement: start from the best member,
    repeatedly add the member (possibly again) whose addition most improves the run's objective
    on the averaged validation probabilities, stop when no addition improves it. Weights are the
    selection counts. The default.

>>> import numpy as np
>>> y = np.array([0, 1, 1, 0])
>>> good = np.array([[.9, .1], [.2, .8], [.4, .6], [.6, .4]])
>>> bad = np.array([[.1, .9], [.9, .1], [.9, .1], [.1, .9]])
>>> greedy_selection([good, bad], y).weights
[1.0, 0.0]
>>> greedy_selection([bad, good], y, Objective.of("val_loss")).weights
[0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from automl.objective import Objective
from automl.stages import ENSEMBLE_METHODS as METHODS



@dataclass
class Ensemble:
    """Member weights, and for greedy selection the order members were picked and the score path."""

    method: str
    weights: list[float]
    picks: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def predict(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        return average(member_probs, self.weights)


def average(member_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of members' class probabilities."""
    stacked = np.stack(member_probs)
    weights = np.asarray(weights, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), stacked, axes=1)


def build_ensemble(
    method: str, member_probs: Sequence[np.ndarray], y_val: np.ndarray, objective: Objective = Objective()
) -> Ensemble:
    """Weights for ``member_probs`` (each (N, K) on the validation split) by ``method``."""
    if method == "greedy":
        return greedy_selection(member_probs, y_val, objective)
    if method == "mean":
        return Ensemble("mean", [1.0 / len(member_probs)] * len(member_probs))
    if method == "weighted":
        scores = np.array([objective.score(y_val, p) for p in member_probs])
        merit = scores if objective.direction == "max" else 1.0 / np.maximum(scores, 1e-12)
        return Ensemble("weighted", [float(w) for w in merit / merit.sum()], scores=[float(s) for s in scores])
    raise ValueError(f"unknown ensemble method {method!r}; use one of {', '.join(METHODS)}")


def greedy_selection(
    member_probs: Sequence[np.ndarray], y_val: np.ndarray, objective: Objective = Objective(), max_rounds: int = 50
) -> Ensemble:
    """Caruana's forward selection with replacement; ties keep the earlier (better-ranked) member."""
    singles = [objective.score(y_val, p) for p in member_probs]
    first = objective.best_index(singles)
    picks, scores = [first], [singles[first]]
    total = member_probs[first].astype(np.float64)
    for _ in range(max_rounds):
        candidates = [objective.score(y_val, (total + p) / (len(picks) + 1)) for p in member_probs]
        best = objective.best_index(candidates)
        if not objective.better(candidates[best], scores[-1]):
            break
        picks.append(best)
        scores.append(candidates[best])
        total = total + member_probs[best]
    counts = np.bincount(picks, minlength=len(member_probs)).astype(np.float64)
    return Ensemble("greedy", [float(w) for w in counts / counts.sum()], picks=picks, scores=[float(s) for s in scores])
