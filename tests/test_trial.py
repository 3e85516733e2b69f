import numpy as np
import pytest

from automl.data import load_dataset
from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.objective import Objective
from automl.spec import TrainingSpec
from automl.trial import (TrainingBatches, balanced_class_weights, build_candidate, evaluate, fit_candidate,
                          resample_indices)


def test_oversampling_lifts_small_classes_to_the_target():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 3)
    rng = np.random.default_rng(0)
    to_majority = np.bincount(labels[resample_indices(labels, 3, 0, rng)])
    assert to_majority.tolist() == [50, 50, 50]
    capped = np.bincount(labels[resample_indices(labels, 3, 20, rng)])
    assert capped.tolist() == [50, 20, 20]  # seed 003's S2: only classes under the cap grow


def test_balanced_class_weights_match_scikit_learn_formula():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    np.testing.assert_allclose(balanced_class_weights(labels, 4), [12 / 18, 12 / 6, 12 / 12, 0.0])


def test_batches_carry_weights_only_when_asked():
    images, labels = np.zeros((30, 4, 4, 3), np.uint8), np.array([0] * 25 + [1] * 5)
    plain = TrainingBatches(images, labels, ModelConfig.from_params({"batch_size": 8}), 2, seed=0)
    assert len(plain) == 4 and len(plain[0]) == 2
    both = TrainingBatches(images, labels, ModelConfig.from_params({"batch_size": 8, "imbalance": "both"}), 2, seed=0)
    assert len(both) == 7  # 25 + 25 after oversampling
    _, _, w = both[0]
    assert np.allclose(w, 1.0)  # oversampling already balanced the classes


def test_short_real_training_run_learns_the_tiny_data(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    cfg = ModelConfig.from_params({"conv_blocks": 2, "base_filters": 8, "dense_units": 32, "dense_dropout": 0.0,
                                   "learning_rate": 3e-3, "batch_size": 16, "imbalance": "class_weight"})
    result = fit_candidate(cfg, ds, Objective(), TrainingSpec(epochs=12, early_stopping_patience=5))
    assert 1 <= len(result.history) <= 12
    assert {"loss", "val_balanced_accuracy", "val_macro_f1", "val_auc", "val_loss"} <= set(result.history[0])
    test = evaluate(result.model, ds, "test")
    # Seven colours, one per class: chance is 1/7.
    assert test["balanced_accuracy"] > 0.6, test["balanced_accuracy"]
    assert result.best_value == max(r["val_balanced_accuracy"] for r in result.history)


def test_a_narrow_resnet_trains_and_a_too_big_candidate_is_refused(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    cfg = ModelConfig.from_params({"family": "resnet", "resnet_stages": 3, "resnet_blocks": 1, "resnet_width": 8,
                                   "resnet_stem_stride": 2, "head": "gap", "dense_layers": 0, "batch_size": 32,
                                   "learning_rate": 3e-3, "imbalance": "class_weight"})
    result = fit_candidate(cfg, ds, Objective(), TrainingSpec(epochs=1, early_stopping_patience=0))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert 0.0 <= result.history[0]["val_balanced_accuracy"] <= 1.0
    assert any(layer.name == "stage2_block1_add" for layer in result.model.layers)  # residual
    with pytest.raises(SpecError, match=r"above training.max_parameters \(1,000\)"):
        build_candidate(cfg, ds, TrainingSpec(max_parameters=1000))
