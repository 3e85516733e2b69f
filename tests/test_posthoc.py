"""After training: TTA views, the prior correction, temperature scaling and calibration metrics (values worked
out by hand), and the ensemble stage choosing among them on a run folder of stored probabilities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from automl.errors import UserError
from automl.ensemble import choose_tta, evaluate_run
from automl.hparams import ModelConfig
from automl.layout import RunLayout
from automl.metrics import HEADLINE, brier_score, calibration_metrics
from automl.objective import Objective
from automl.posthoc import (
    apply_temperature,
    combine,
    correct_prior,
    fit_temperature,
    predict_modes,
    prior_factor,
    tta_modes,
    views,
)
from automl.trial import TrainingBatches, expected_class_mix, resample_indices


def test_prior_correction_by_hand():
    # Trained on a 50/50 mix, the training prior is 80/20: factors 0.8/0.5 = 1.6 and 0.2/0.5 = 0.4.
    factor = prior_factor([0.8, 0.2], [0.5, 0.5])
    np.testing.assert_allclose(factor, [1.6, 0.4])
    corrected = correct_prior(np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]), factor)
    # [.8, .2]; [.32, .32] -> [.5, .5]; [1.44, .04] / 1.48
    np.testing.assert_allclose(corrected, [[0.8, 0.2], [0.5, 0.5], [1.44 / 1.48, 0.04 / 1.48]])
    # A class the member never saw has nothing to correct.
    np.testing.assert_allclose(prior_factor([0.6, 0.4, 0.0], [0.5, 0.5, 0.0]), [1.2, 0.8, 1.0])


def test_temperature_by_hand_and_fitted_on_validation():
    # T = 2 takes square roots: sqrt(.8) / (sqrt(.8) + sqrt(.2)) = 2 / 3.
    np.testing.assert_allclose(apply_temperature(np.array([[0.8, 0.2]]), 2.0), [[2 / 3, 1 / 3]])
    np.testing.assert_allclose(apply_temperature(np.array([[0.8, 0.2]]), 0.5), [[0.64 / 0.68, 0.04 / 0.68]])
    probs = np.random.default_rng(0).dirichlet(np.ones(5), 50)
    for t in (0.3, 1.0, 4.0):
        scaled = apply_temperature(probs, t)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))  # no prediction changes
    # Always (.9, .1) but right only 3 times in 4: the calibrated answer is .75, i.e. 1 / (1 + (1/9) ** (1/T)) = .75,
    # so (1/9) ** (1/T) = 1/3 and T = 2.
    y = np.array([0, 0, 0, 1] * 10)
    assert fit_temperature(np.tile([0.9, 0.1], (40, 1)), y) == pytest.approx(2.0, abs=1e-3)


def test_combine_corrects_each_member_then_averages_then_applies_the_temperature():
    a, b = np.array([[0.5, 0.5]]), np.array([[0.2, 0.8]])
    factors = [np.array([1.6, 0.4]), np.array([1.0, 1.0])]
    # a -> (.8, .2), b stays; weights 3:1 -> (.65, .35); T = 1 keeps it.
    np.testing.assert_allclose(combine([a, b], [3, 1], factors), [[0.65, 0.35]])
    np.testing.assert_allclose(combine([a, b], [3, 1], factors, 2.0),
                               [[np.sqrt(0.65) / (np.sqrt(0.65) + np.sqrt(0.35)), np.sqrt(0.35) /
                                 (np.sqrt(0.65) + np.sqrt(0.35))]])


def test_ece_and_brier_by_hand():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.75, 0.25]])
    # Top-label confidences .9 (right), .6 (wrong), .7 (right), .75 (right): bins of width 1/15 hold one each.
    # ECE = (.1 + .6 + .3 + .25) / 4
    m = calibration_metrics(y, probs)
    assert m["ece"] == pytest.approx(1.25 / 4)
    # Brier: (.1^2 + .1^2) + (.6^2 + .6^2) + (.3^2 + .3^2) + (.25^2 + .25^2), over 4 images.
    assert m["brier"] == pytest.approx(2 * (0.01 + 0.36 + 0.09 + 0.0625) / 4)
    assert brier_score(np.array([2]), np.array([[0.0, 0.0, 1.0]])) == 0.0
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.75])), rel=1e-6)


def test_effective_class_mix_by_hand():
    counts = np.array([8, 2, 0])
    np.testing.assert_allclose(expected_class_mix(counts, "none", 0), [0.8, 0.2, 0.0])
    np.testing.assert_allclose(expected_class_mix(counts, "class_weight", 0), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(expected_class_mix(counts, "oversample", 0), [0.5, 0.5, 0.0])  # up to the largest
    # 10 draws an epoch in the proportions 8:4 (6.67, 3.33): 7 and 3.
    np.testing.assert_allclose(expected_class_mix(counts, "oversample", 4), [0.7, 0.3, 0.0])
    np.testing.assert_allclose(expected_class_mix(counts, "both", 4), [0.5, 0.5, 0.0])


@pytest.mark.parametrize("imbalance, oversample_to", [("none", 0), ("class_weight", 0), ("oversample", 0),
                                                      ("oversample", 15), ("both", 15)])
def test_effective_class_mix_is_what_the_training_batches_weigh(imbalance, oversample_to):
    labels = np.repeat([0, 1, 2], [40, 10, 5])
    config = ModelConfig.from_params({"imbalance": imbalance, "oversample_to": oversample_to})
    batches = TrainingBatches(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, config, 3, seed=0)
    drawn = labels[batches.order]
    weight = batches.weights[drawn] if batches.weights is not None else np.ones(len(drawn))
    seen = np.bincount(drawn, weights=weight, minlength=3)
    np.testing.assert_allclose(seen / seen.sum(), expected_class_mix(np.bincount(labels), imbalance, oversample_to))
    assert len(resample_indices(labels, 3, oversample_to, np.random.default_rng(0))) == len(labels)


def test_tta_views_are_numpy_flips_and_quarter_turns():
    images = np.arange(2 * 3 * 3 * 2, dtype=np.uint8).reshape(2, 3, 3, 2)  # asymmetric: every pixel differs
    flips = [images, images[:, :, ::-1], images[:, ::-1, ::-1], images[:, ::-1, :]]
    turns = [np.rot90(images, 1, axes=(1, 2)), np.rot90(images, 1, axes=(1, 2))[:, :, ::-1],
             np.rot90(images, 3, axes=(1, 2)), np.rot90(images, 3, axes=(1, 2))[:, :, ::-1]]
    got = [v.numpy() for v in views(images, "dihedral")]
    assert len(got) == 8 and all(v.dtype == np.uint8 for v in got)
    for view, expected in zip(got, flips + turns, strict=True):
        np.testing.assert_array_equal(view, expected)
    assert len({v.tobytes() for v in got}) == 8  # the 8 symmetries of the square, each once
    assert [v.numpy().tobytes() for v in views(images, "flips")] == [v.tobytes() for v in got[:4]]
    np.testing.assert_array_equal(views(images, "none")[0].numpy(), images)
    assert tta_modes((16, 16)) == ("none", "flips", "dihedral") and tta_modes((12, 16)) == ("none", "flips")
    with pytest.raises(ValueError, match="unknown TTA mode"):
        views(images, "rot45")


def test_predict_modes_averages_each_modes_views():
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3)).astype(np.uint8)

    def predict(x):  # a "model" that sees where the image is bright: top-left pixel vs bottom-right pixel
        score = np.stack([x[:, 0, 0, 0], x[:, -1, -1, 0]], axis=1).astype(np.float64) + 1
        return score / score.sum(axis=1, keepdims=True)

    got = predict_modes(predict, images, ("none", "flips", "dihedral"))
    for mode, count in (("none", 1), ("flips", 4), ("dihedral", 8)):
        expected = np.mean([predict(v.numpy()) for v in views(images, mode)], axis=0)
        assert len(views(images, mode)) == count
        np.testing.assert_allclose(got[mode], expected)


# --- the ensemble stage on stored probabilities ---------------------------------------------------------------

CLASSES = ("a", "b")


def noisy(y, skill, rng):
    """Probabilities of a classifier whose logit for the true class is raised by ``skill``."""
    logits = skill * np.eye(2)[y] + rng.normal(0, 1, (len(y), 2))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def fake_run(root, flips_skill: float, refit: bool = False):
    """A run folder after retrain: two members with plain, flips and dihedral probabilities, labels, run.json.

    The members' "flips" probabilities have ``flips_skill`` (plain ones 0.5), dihedral the same as flips.
    """
    run = RunLayout(root)
    rng = np.random.default_rng(0)
    y = {"val": np.array([0] * 60 + [1] * 20), "test": np.array([0] * 60 + [1] * 20)}
    rows = []
    for member in ("m01", "m02"):
        folder = run.member(member)
        folder.mkdir(parents=True)
        for split in ("val", "test"):
            plain, better = noisy(y[split], 0.5, rng), noisy(y[split], flips_skill, rng)
            for mode, probs in (("none", plain), ("flips", better), ("dihedral", better)):
                np.save(run.member_probs(folder, split, mode), probs)
        rows.append({"member_id": member, "trial_id": f"t{member}", "seed": 0, "epochs": 5, "best_epoch": 3,
                     "class_prior": [0.75, 0.25], "class_mix": [0.5, 0.5]})
    pd.DataFrame(rows).to_parquet(run.members)
    np.savez(run.labels, y_val=y["val"], y_test=y["test"], class_names=np.array(CLASSES))
    info = {"name": root.name, "metric": "val_balanced_accuracy", "mode": "max", "task": "multiclass",
            "image_size": [8, 8], "split": "test split", "retrain": {"ended": "T1", "wall_s": 1.0}}
    if refit:
        for member in ("m01", "m02"):
            folder = run.member(member, refit=True)
            folder.mkdir(parents=True)
            for mode in ("none", "flips", "dihedral"):
                np.save(run.member_probs(folder, "test", mode), noisy(y["test"], 3.0, rng))
        pd.DataFrame([r | {"class_prior": [0.7, 0.3]} for r in rows]).to_parquet(run.refit_members)
        info["refit"] = {"retrain_ended": "T1", "members": 2, "wall_s": 60.0}
    run.info_file.write_text(json.dumps(info))
    return run


def test_choose_tta_picks_the_best_mode_and_the_cheaper_one_on_a_tie():
    y = np.array([0, 1, 0, 1])
    good, bad = np.array([[.9, .1], [.1, .9], [.8, .2], [.3, .7]]), np.array([[.4, .6], [.6, .4], [.8, .2], [.3, .7]])
    mode, ensemble, scores = choose_tta("mean", {"none": [bad], "flips": [good], "dihedral": [good]}, y, Objective())
    assert mode == "flips" and scores == {"none": 0.5, "flips": 1.0, "dihedral": 1.0}
    assert ensemble.weights == [1.0]
    mode, _, _ = choose_tta("mean", {"none": [good], "flips": [good], "dihedral": [good]}, y, Objective.of("val_loss"))
    assert mode == "none"


def test_ensemble_stage_picks_tta_applies_the_decision_and_calibrates(tmp_path):
    run = fake_run(tmp_path / "run", flips_skill=3.0, refit=True)
    results = evaluate_run(run.root, method="mean", decision="prior", bootstrap=20)
    summary, metrics = run.read_ensemble(), run.read_ensemble_metrics()
    assert summary["tta"] == "flips"  # better than none, tied with the dearer dihedral
    assert summary["tta_scores"]["flips"] > summary["tta_scores"]["none"]
    assert summary["decision"] == "prior" and summary["prior_factors"]["m01"] == pytest.approx([1.5, 0.5])
    # The ensemble's test probabilities are the numpy graph tail on the chosen mode's probabilities.
    test = [np.load(run.member_probs(run.member(m), "test", "flips")) for m in ("m01", "m02")]
    labels = run.read_labels()
    expected = combine(test, [0.5, 0.5], [np.array([1.5, 0.5])] * 2, summary["temperature"])
    assert metrics["ensemble"]["test"]["accuracy"] == pytest.approx(
        np.mean(expected.argmax(axis=1) == labels["y_test"]))
    calibration = metrics["ensemble"]["calibration"]
    assert calibration["temperature"] == summary["temperature"] > 0
    assert calibration["val"]["after"]["loss"] <= calibration["val"]["before"]["loss"] + 1e-9  # fitted on val
    assert set(calibration["test"]["before"]) == {"ece", "brier", "loss"}
    # Both rules side by side for the user, the chosen one being this ensemble.
    assert summary["decisions"]["prior"] == {k: metrics["ensemble"]["test"][k] for k in HEADLINE}
    assert set(summary["decisions"]) == {"balanced", "prior"}
    # The refit: the validation run's weights, TTA, decision and temperature, its own priors.
    refit = metrics["refit_ensemble"]
    assert refit["members"] == ["m01", "m02"] and refit["calibration"]["temperature"] == summary["temperature"]
    refit_test = [np.load(run.member_probs(run.member(m, refit=True), "test", "flips")) for m in ("m01", "m02")]
    refit_probs = combine(refit_test, [0.5, 0.5], [prior_factor([0.7, 0.3], [0.5, 0.5])] * 2, summary["temperature"])
    assert refit["test"]["accuracy"] == pytest.approx(np.mean(refit_probs.argmax(axis=1) == labels["y_test"]))
    assert summary["refit"] is True and results["refit_ensemble"] == refit
    report = run.report.read_text()
    assert "**TTA: flips** (4 view(s) per member" in report and "**Decision rule: prior**" in report
    assert "changes no argmax, so accuracy, balanced accuracy, macro-F1" in report
    assert "| before temperature |" in report and "| after temperature |" in report
    assert "## Refit on train+val" in report and "carry over from the validation run" in report
    assert "- refit on train+val: 2 members, 1.0 min wall" in report


def test_a_stale_refit_is_left_out_and_old_members_cannot_take_the_prior(tmp_path, capsys):
    run = fake_run(tmp_path / "run", flips_skill=0.5, refit=True)
    info = json.loads(run.info_file.read_text())
    run.info_file.write_text(json.dumps(info | {"retrain": {"ended": "T2", "wall_s": 1.0}}))  # retrained since
    evaluate_run(run.root, method="greedy", bootstrap=5)
    assert "refit_ensemble" not in run.read_ensemble_metrics() and "## Refit" not in run.report.read_text()
    assert "not a refit of this ensemble's members" in capsys.readouterr().err
    assert run.read_ensemble()["decision"] == "balanced" and run.read_ensemble()["prior_factors"] is None
    members = pd.read_parquet(run.members).drop(columns=["class_prior", "class_mix"])
    members.to_parquet(run.members)
    with pytest.raises(UserError, match="no class_prior/class_mix columns"):
        evaluate_run(run.root, decision="prior", bootstrap=5)
    evaluate_run(run.root, decision="balanced", bootstrap=5)  # the default still works on such a run
    assert run.read_ensemble()["decisions"] is None
    with pytest.raises(UserError, match="--decision argmax: use one of balanced, prior"):
        evaluate_run(run.root, decision="argmax")
