"""Exports stay float32 whatever precision trained the members (automl.export.float32_model)."""

import numpy as np

from automl.data import load_dataset
from automl.hparams import ModelConfig
from automl.objective import Objective
from automl.spec import TrainingSpec


def test_a_member_trained_in_mixed_bfloat16_exports_float32_and_predicts_the_same_classes(tiny_ham, tmp_path):
    import keras
    import tensorflow as tf

    from automl.export import assemble, float32_model, write_saved_model
    from automl.trial import fit_candidate, predict_proba

    dataset = load_dataset(tiny_ham, image_size=(16, 16))
    config = ModelConfig.from_params({"conv_blocks": 2, "base_filters": 8, "dense_units": 16, "batch_norm": True,
                                      "learning_rate": 3e-3, "batch_size": 16, "imbalance": "class_weight"})
    trained = fit_candidate(config, dataset, Objective(), TrainingSpec(epochs=4, early_stopping_patience=0,
                                                                       precision="mixed_bfloat16")).model
    assert trained.get_layer("block1_conv1").compute_dtype == "bfloat16"
    trained.save(tmp_path / "model.keras")
    member = keras.saving.load_model(tmp_path / "model.keras", compile=False)  # as export loads a member

    exported = float32_model(member)
    assert {layer.dtype_policy.name for layer in exported.layers} == {"float32"}
    assert {v.dtype for v in exported.weights} == {"float32"}
    for kept, made in zip(member.weights, exported.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(made))  # the very weights, not retrained
    rows = dataset.rows("test")
    mixed, plain = predict_proba(member, dataset.images, rows), predict_proba(exported, dataset.images, rows)
    assert plain.dtype == np.float32
    assert np.abs(mixed - plain).max() < 0.05  # bfloat16 keeps 8 bits of mantissa: close, not equal
    assert (mixed.argmax(1) == plain.argmax(1)).mean() >= 0.97, (mixed.argmax(1), plain.argmax(1))
    assert float32_model(exported) is exported  # a float32 model goes through as it is

    graph = assemble([exported], [1.0], dataset.image_size)
    write_saved_model(graph, tmp_path / "saved_model")
    stored = tf.train.load_checkpoint(str(tmp_path / "saved_model" / "variables" / "variables"))
    weights = {name: dtype for name, dtype in stored.get_variable_to_dtype_map().items() if "VARIABLE_VALUE" in name}
    assert len(weights) >= len(exported.weights) and set(weights.values()) == {tf.float32}
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    outputs = served.serve(tf.constant(dataset.images[rows]))
    assert outputs.dtype == tf.float32
    assert (outputs.numpy().argmax(1) == mixed.argmax(1)).mean() >= 0.97
