import keras
import numpy as np
import pytest

from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.model import build_model

# Seed 000's five architectures (2 conv3x3 per block, filters doubling from 32, max-pool 2, flatten,
# FC doubling from 64, dropout 0.5, softmax 7) at the paper's 75x100 input. Counts follow from
# Keras' layer formulas with 'same' padding, the only padding under which all five fit.
SEED000 = {
    "base": (1, 64, 3_799_463),
    "model2": (2, 128, 3_752_999),
    "model3": (3, 256, 3_828_007),
    "proposed": (4, 512, 4_322_087),
    "model5": (5, 1024, 7_866_151),
}


@pytest.mark.parametrize("name", SEED000)
def test_seed000_architectures_parameter_counts(name):
    blocks, units, params = SEED000[name]
    cfg = ModelConfig.from_params(
        {"conv_blocks": blocks, "dense_units": units, "block_dropout": [0.1 * (i + 1) for i in range(blocks)]}
    )
    assert build_model(cfg, (75, 100), 7).count_params() == params


def test_seed001_winning_models_parameter_counts():
    # A: 3 x (conv 32, 3x3, relu; max-pool 3), dense 64, dropout 0.5, Adam. B: 2 x (conv 16 ...),
    # dense 64, dropout 0.3, uniform init, RMSprop. 224x224, one sigmoid output.
    a = ModelConfig.from_params({"conv_blocks": 3, "convs_per_block": 1, "filters": 32, "pool_size": 3,
                                 "padding": "valid", "dense_units": 64, "dense_dropout": 0.5, "optimizer": "adam"})
    b = ModelConfig.from_params({"conv_blocks": 2, "convs_per_block": 1, "filters": 16, "pool_size": 3,
                                 "dense_units": 64, "dense_dropout": 0.3, "initializer": "random_uniform",
                                 "optimizer": "rmsprop"})
    assert build_model(a, (224, 224), 2).count_params() == 119_873
    assert build_model(b, (224, 224), 2).count_params() == 592_721


def test_binary_model_outputs_two_probabilities_that_sum_to_one():
    model = build_model(ModelConfig.from_params({"conv_blocks": 1}), (16, 16), 2)
    probs = model(np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")).numpy()
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_augmentation_only_in_training():
    cfg = ModelConfig.from_params({"conv_blocks": 1, "flip_horizontal": True, "flip_vertical": True,
                                   "rotation": 45, "zoom": 0.2, "shift": 0.1})
    model = build_model(cfg, (16, 16), 7)
    assert {"augment_flip", "augment_rotation", "augment_zoom", "augment_shift"} <= {l.name for l in model.layers}
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))


@pytest.mark.parametrize("options", [{"batch_norm": True, "pool_type": "avg", "head": "gap", "dense_layers": 2},
                                     {"optimizer": "sgd", "activation": "elu", "dense_layers": 0}])
def test_variants_build_and_save(tmp_path, options):
    model = build_model(ModelConfig.from_params({"conv_blocks": 2} | options), (16, 16), 2)
    model.save(tmp_path / "m.keras")
    x = np.zeros((1, 16, 16, 3), "float32")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras")(x), model(x), rtol=1e-6)


def test_too_deep_is_rejected_before_keras():
    with pytest.raises(SpecError, match="too deep for 28x28"):
        build_model(ModelConfig.from_params({"conv_blocks": 5}), (28, 28), 7)
