import numpy as np
import pytest

from automl.ensemble_methods import average, build_ensemble, greedy_selection
from automl.objective import Objective


def balanced_accuracy(y, probs):
    return Objective().score(y, probs)


def one_hot(pred, k=3, confidence=0.8):
    probs = np.full((len(pred), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


Y = np.array([0, 0, 1, 1, 2, 2])
# A is sure and right on classes 0 and 1 but unsure and wrong on class 2; B is the reverse.
A = np.array([[.9, .05, .05], [.9, .05, .05], [.05, .9, .05], [.05, .9, .05], [.4, .25, .35], [.4, .25, .35]])
B = np.array([[.3, .4, .3], [.3, .4, .3], [.4, .3, .3], [.4, .3, .3], [.05, .05, .9], [.05, .05, .9]])
C = one_hot([1, 1, 1, 1, 2, 2], confidence=0.6)  # misses class 0


def test_greedy_starts_from_the_best_member_and_adds_what_helps():
    singles = [balanced_accuracy(Y, p) for p in (A, B, C)]
    ens = greedy_selection([A, B, C], Y)
    assert ens.picks[0] == int(np.argmax(singles))
    assert ens.scores[-1] == pytest.approx(1.0) and max(singles) < 1.0
    assert ens.scores == sorted(ens.scores) and len(set(ens.scores)) == len(ens.scores)  # strictly improving
    assert sum(ens.weights) == pytest.approx(1.0)
    assert balanced_accuracy(Y, ens.predict([A, B, C])) == pytest.approx(ens.scores[-1])


def test_greedy_allows_repeats():
    # Adding B twice beats adding it once: selection with replacement must be able to do that.
    y = np.array([0, 1])
    a = np.array([[0.9, 0.1], [0.9, 0.1]])
    b = np.array([[0.6, 0.4], [0.3, 0.7]])
    ens = greedy_selection([a, b], y)
    assert ens.picks[0] == 1 and ens.weights == [0.0, 1.0]
    c = np.array([[0.45, 0.55], [0.2, 0.8]])
    ens = greedy_selection([a, c, b], np.array([0, 1]))
    assert ens.picks.count(2) >= 1


def test_greedy_stops_when_nothing_improves():
    ens = greedy_selection([A, A.copy()], Y)
    assert ens.picks == [0]


def test_mean_and_weighted():
    mean = build_ensemble("mean", [A, B], Y)
    assert mean.weights == [0.5, 0.5]
    np.testing.assert_allclose(mean.predict([A, B]), (A + B) / 2)
    weighted = build_ensemble("weighted", [A, B, C], Y)
    scores = np.array([balanced_accuracy(Y, p) for p in (A, B, C)])
    np.testing.assert_allclose(weighted.weights, scores / scores.sum())
    np.testing.assert_allclose(average([A, B, C], weighted.weights).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="unknown ensemble method"):
        build_ensemble("vote", [A], Y)


@pytest.mark.parametrize("metric", ["val_auc", "val_loss", "val_macro_f1"])
def test_greedy_follows_the_objective_including_one_to_minimise(metric):
    objective = Objective.of(metric)
    singles = [objective.score(Y, p) for p in (A, B, C)]
    ens = greedy_selection([A, B, C], Y, objective)
    assert ens.picks[0] == objective.best_index(singles)
    # Every added pick made the objective strictly better, in the objective's own direction.
    assert all(objective.better(b, a) for a, b in zip(ens.scores, ens.scores[1:]))
    assert ens.scores[-1] == pytest.approx(objective.score(Y, ens.predict([A, B, C])))
    assert not objective.better(singles[ens.picks[0]], ens.scores[-1])


def test_weighted_by_a_loss_gives_the_lower_loss_more_weight():
    objective = Objective.of("val_loss")
    weighted = build_ensemble("weighted", [A, C], Y, objective)
    losses = [objective.score(Y, p) for p in (A, C)]
    assert (weighted.weights[0] > weighted.weights[1]) == (losses[0] < losses[1])
