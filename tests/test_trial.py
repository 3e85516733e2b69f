import numpy as np
import pytest

from automl.data import load_dataset
from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.objective import Objective
from automl.spec import TrainingSpec
from automl.trial import (CandidateFit, EpochRunner, TrainingBatches, balanced_class_weights, build_candidate,
                          epoch_class_counts, evaluate, expected_class_mix, fit_candidate, resample_indices)


def test_an_oversampled_epoch_keeps_the_split_size_and_shares_it_in_the_lifted_proportions():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 3)
    rng = np.random.default_rng(0)
    # Up to the majority: 50:50:50 -> 63 / 3 = 21 each.
    to_majority = resample_indices(labels, 3, 0, rng)
    assert np.bincount(labels[to_majority]).tolist() == [21, 21, 21]
    # Capped at 20 (seed 003's S2: only classes under the cap grow): 50:20:20 of 63 -> 35, 14, 14.
    capped = resample_indices(labels, 3, 20, rng)
    assert np.bincount(labels[capped]).tolist() == [35, 14, 14]
    # A class drawn at least as often as it occurs has every image once; the majority a subset without repeats.
    assert set(np.flatnonzero(labels > 0)) <= set(capped)
    assert len(set(capped[labels[capped] == 0])) == 35


def test_epoch_class_counts_by_hand():
    counts = [50, 10, 3, 0]
    assert epoch_class_counts(counts, "none", 20).tolist() == [50, 10, 3, 0]
    assert epoch_class_counts(counts, "class_weight", 20).tolist() == [50, 10, 3, 0]
    assert epoch_class_counts(counts, "oversample", 20).tolist() == [35, 14, 14, 0]
    # 64 draws in the proportions 51:20:20 are 35.87, 14.07, 14.07 -> 35 + 14 + 14 = 63; the one left goes to
    # the largest remainder (class 0); the absent class gets none.
    assert epoch_class_counts([51, 10, 3, 0], "both", 20).tolist() == [36, 14, 14, 0]


@pytest.mark.parametrize("imbalance, oversample_to", [("none", 0), ("class_weight", 0), ("oversample", 0),
                                                      ("oversample", 20), ("both", 20), ("both", 1000)])
def test_every_epoch_draws_as_many_samples_as_the_split_whatever_the_imbalance(imbalance, oversample_to):
    labels = np.array([0] * 50 + [1] * 10 + [2] * 3)
    config = ModelConfig.from_params({"batch_size": 8, "imbalance": imbalance, "oversample_to": oversample_to})
    batches = TrainingBatches(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, config, 3, seed=0)
    expected = epoch_class_counts(np.bincount(labels), imbalance, oversample_to)
    for _ in range(3):
        batches.on_epoch_begin()
        served = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert len(served) == len(labels) and len(batches) == 8
        assert np.bincount(served, minlength=3).tolist() == expected.tolist()


def test_a_resumed_run_draws_what_the_uninterrupted_run_draws():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 3)
    config = ModelConfig.from_params({"imbalance": "oversample", "oversample_to": 20})
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    uninterrupted = TrainingBatches(images, labels, config, 3, seed=5)
    orders = []
    for _ in range(3):
        uninterrupted.on_epoch_begin()
        orders.append(uninterrupted.order.copy())
    resumed = TrainingBatches(images, labels, config, 3, seed=5, first_epoch=2)
    resumed.on_epoch_begin()
    np.testing.assert_array_equal(resumed.order, orders[2])
    assert not np.array_equal(orders[0], orders[1])  # a fresh draw every epoch


def test_balanced_class_weights_match_scikit_learn_formula():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    np.testing.assert_allclose(balanced_class_weights(labels, 4), [12 / 18, 12 / 6, 12 / 12, 0.0])


def test_batches_carry_weights_only_when_asked():
    images, labels = np.zeros((30, 4, 4, 3), np.uint8), np.array([0] * 25 + [1] * 5)
    plain = TrainingBatches(images, labels, ModelConfig.from_params({"batch_size": 8}), 2, seed=0)
    assert len(plain) == 4 and len(plain[0]) == 2
    both = TrainingBatches(images, labels, ModelConfig.from_params({"batch_size": 8, "imbalance": "both"}), 2, seed=0)
    assert len(both) == 4  # 15 + 15 after oversampling: as many as the split
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


def test_epochs_report_their_seconds_and_the_samples_seen_and_a_restored_runner_carries_on(tiny_ham, tmp_path):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    n_train = int(ds.class_counts("train").sum())
    cfg = ModelConfig.from_params({"conv_blocks": 1, "base_filters": 4, "dense_units": 8, "batch_size": 16,
                                   "imbalance": "both", "oversample_to": 40})
    runner = EpochRunner(cfg, ds, Objective(), TrainingSpec(), seed=0)
    epochs = [runner.run_epoch(), runner.run_epoch()]
    assert [e["samples_seen"] for e in epochs] == [n_train, 2 * n_train]
    assert all(e["epoch_s"] > 0 for e in epochs)
    assert runner.batches.next_epoch == 2  # Keras began exactly one epoch of batches per epoch run
    runner.save(tmp_path)
    restored = EpochRunner(cfg, ds, Objective(), TrainingSpec(), seed=0)
    restored.restore(tmp_path)
    assert restored.run_epoch()["samples_seen"] == 3 * n_train
    runner.run_epoch()
    np.testing.assert_array_equal(restored.batches.order, runner.batches.order)  # the same third epoch's draw


def test_the_output_starts_at_the_class_mix_the_loss_sees(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    counts = ds.class_counts("train")

    def start(imbalance: str) -> np.ndarray:
        cfg = ModelConfig.from_params({"conv_blocks": 1, "base_filters": 4, "dense_units": 8,
                                       "imbalance": imbalance, "oversample_to": 30})
        bias = build_candidate(cfg, ds, TrainingSpec()).get_layer("probabilities").bias.numpy()
        return np.exp(bias) / np.exp(bias).sum()

    np.testing.assert_allclose(start("none"), counts / counts.sum(), rtol=1e-5)
    np.testing.assert_allclose(start("oversample"), expected_class_mix(counts, "oversample", 30), rtol=1e-5)
    np.testing.assert_array_equal(start("class_weight"), np.full(7, 1 / 7, np.float32))  # a zero bias


def test_a_fit_saved_after_an_epoch_and_restored_goes_on_as_the_uninterrupted_one(tiny_ham, tmp_path):
    import keras

    ds = load_dataset(tiny_ham, image_size=(16, 16))
    cfg = ModelConfig.from_params({"conv_blocks": 1, "base_filters": 4, "dense_units": 8, "dense_dropout": 0.0,
                                   "batch_size": 16, "learning_rate": 3e-3, "imbalance": "oversample"})
    training = TrainingSpec(epochs=4, early_stopping_patience=2, reduce_lr_patience=1)
    whole = CandidateFit(cfg, ds, Objective(), training).run()

    class StopAfter(keras.callbacks.Callback):
        """Saves after epoch ``n`` and ends the fit there, as a killed process would have."""

        def __init__(self, fit, n):
            super().__init__()
            self.fit, self.n = fit, n

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == self.n:
                self.fit.save(tmp_path)
                self.model.stop_training = True

    first = CandidateFit(cfg, ds, Objective(), training)
    first.run(callbacks=[StopAfter(first, 2)])
    resumed = CandidateFit(cfg, ds, Objective(), training)
    resumed.restore(tmp_path)
    assert resumed.epochs_done == 2
    result = resumed.run()
    keys = ("val_balanced_accuracy", "val_loss", "learning_rate", "samples_seen")
    np.testing.assert_allclose([[row[k] for k in keys] for row in result.history],
                               [[row[k] for k in keys] for row in whole.history], atol=1e-5)
    assert result.best_epoch == whole.best_epoch
    for restored, uninterrupted in zip(result.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(restored, uninterrupted, atol=1e-5)
