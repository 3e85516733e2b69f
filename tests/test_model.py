import keras
import numpy as np
import pytest

from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.model import ShadesOfGray, build_model, set_output_prior

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


def test_output_prior_by_hand():
    model = build_model(ModelConfig.from_params({"conv_blocks": 1}), (16, 16), 3)
    set_output_prior(model, [0.5, 0.25, 0.25])  # log shares, the largest at 0: [0, log 1/2, log 1/2]
    np.testing.assert_allclose(model.get_layer("probabilities").bias.numpy(), [0.0, -0.693147, -0.693147], rtol=1e-5)
    set_output_prior(model, [0.5, 0.5, 0.0])  # an absent class starts at 1e-4: log(1e-4 / 0.5) = -8.517
    np.testing.assert_allclose(model.get_layer("probabilities").bias.numpy(), [0.0, 0.0, -8.517193], rtol=1e-5)
    set_output_prior(model, [1 / 3, 1 / 3, 1 / 3])  # uniform (class weights): Keras' own zero bias
    assert not model.get_layer("probabilities").bias.numpy().any()
    binary = build_model(ModelConfig.from_params({"conv_blocks": 1}), (16, 16), 2)
    set_output_prior(binary, [0.8, 0.2])  # the sigmoid's log-odds, log(0.2 / 0.8) = -1.386
    np.testing.assert_allclose(binary.get_layer("malignant").bias.numpy(), [-1.386294], rtol=1e-5)
    # With dense weights at zero, the output is the prior whatever the image.
    kernel = binary.get_layer("malignant").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    np.testing.assert_allclose(binary(np.zeros((1, 16, 16, 3), "float32")).numpy(), [[0.8, 0.2]], rtol=1e-5)


def test_too_deep_is_rejected_before_keras():
    with pytest.raises(SpecError, match="too deep for 28x28"):
        build_model(ModelConfig.from_params({"conv_blocks": 5}), (28, 28), 7)


def test_medmnist_resnet18_is_one_configuration():
    # MedMNIST's ResNet-18 for 28 px (a 3x3 stride-1 stem without pooling, 2 basic blocks in each of 4 stages of
    # 64-512 filters, global average, one linear layer) has 11,173,962 parameters for 10 classes as PyTorch counts
    # them (batch norm's scale and offset, not its running statistics): our trainable weights, for 7 classes.
    model = build_model(ModelConfig.from_params({"family": "resnet", "head": "gap", "dense_layers": 0}), (28, 28), 7)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 11_173_962 - (512 * 10 + 10) + (512 * 7 + 7)
    assert model.get_layer("stage4_block2_out").output.shape[1:] == (4, 4, 512)  # 28 -> 14 -> 7 -> 4
    narrow = ModelConfig.from_params({"family": "resnet", "resnet_width": 16, "resnet_stem_stride": 2,
                                      "resnet_blocks": [1, 1, 2], "resnet_stages": 3})
    model = build_model(narrow, (28, 28), 2)
    assert model.get_layer("stage3_block2_out").output.shape[1:] == (4, 4, 64)  # 28 -> 14 (stem) -> 7 -> 4
    assert model.output_shape == (None, 2)


def shades_of_gray_reference(image: np.ndarray, p: float) -> np.ndarray:
    """The numpy function of the ISIC 2018/2019 entries' colour-constancy preprocessing."""
    rgb = np.power(np.mean(np.power(image.astype(np.float64), p), axis=(0, 1)), 1 / p)
    rgb = rgb / np.sqrt(np.sum(rgb**2))
    return np.clip(image * (1 / (rgb * np.sqrt(3))), 0, 255)


def test_shades_of_gray_matches_values_worked_out_by_hand():
    # Grey world (p = 1) on two pixels: illuminant = channel means (150, 100, 50), |e| = sqrt(35000) = 187.083;
    # gains |e| / (sqrt(3) e) = 0.72008, 1.08012, 2.16025.
    x = np.array([[[[200, 100, 50], [100, 100, 50]]]], "float32")
    np.testing.assert_allclose(ShadesOfGray(1.0)(x).numpy()[0, 0], [[144.016, 108.012, 108.012],
                                                                     [72.008, 108.012, 108.012]], rtol=1e-5)
    grey = np.full((1, 4, 4, 3), 90.0, "float32")
    np.testing.assert_allclose(ShadesOfGray(6.0)(grey).numpy(), grey, rtol=1e-5)  # a grey illuminant stays
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)) * [1.0, 0.7, 0.4]  # a warm cast, per image
    images[1] *= 0.5
    for p in (6.0, 12.0):
        out = ShadesOfGray(p)(images.astype("float32")).numpy()
        for image, got in zip(images, out):
            np.testing.assert_allclose(got, shades_of_gray_reference(image, p), rtol=1e-4, atol=1e-3)


def test_colour_constancy_and_colour_jitter_in_the_graph_round_trip(tmp_path):
    cfg = ModelConfig.from_params({"conv_blocks": 1, "colour_constancy": "shades_of_gray", "sog_p": 6.0,
                                   "brightness": 0.2, "contrast": 0.3, "saturation": 0.4, "hue": 0.1})
    model = build_model(cfg, (16, 16), 7)
    x = (np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)) * [1.0, 0.8, 0.5]).astype("float32")
    constancy = keras.Model(model.inputs, model.get_layer("colour_constancy").output)
    np.testing.assert_allclose(constancy(x).numpy()[0], shades_of_gray_reference(x[0], 6.0), rtol=1e-4, atol=1e-3)
    scaled = x / 255
    for name in ("augment_brightness", "augment_contrast", "augment_saturation", "augment_hue"):
        layer = model.get_layer(name)
        np.testing.assert_array_equal(layer(scaled, training=False), scaled)  # only while training
        assert not np.allclose(layer(scaled, training=True), scaled), name
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded(x, training=False), model(x, training=False), rtol=1e-6)
    assert reloaded.get_layer("colour_constancy").p == 6.0
