import pytest

from automl.errors import SpecError
from automl.hparams import ModelConfig


def test_defaults_resolve_per_block_values():
    cfg = ModelConfig.from_params({})
    assert cfg.conv_blocks == 3
    assert cfg.filters == (32, 64, 128)
    assert cfg.convs_per_block == (2, 2, 2)
    assert cfg.dense_units == (128,)


def test_list_and_indexed_overrides():
    cfg = ModelConfig.from_params({"conv_blocks": 4, "block_dropout": [0.1, 0.2, 0.3, 0.4], "block_dropout_2": 0.25})
    assert cfg.block_dropout == (0.1, 0.25, 0.3, 0.4)


def test_indexed_value_for_a_missing_block_is_ignored():
    # A search samples block_dropout_4 only when conv_blocks >= 4; a stray one must not break a 2-block model.
    cfg = ModelConfig.from_params({"conv_blocks": 2, "block_dropout_4": 0.4})
    assert cfg.block_dropout == (0.0, 0.0)


def test_explicit_filters_per_block():
    assert ModelConfig.from_params({"conv_blocks": 2, "filters": [16, 48]}).filters == (16, 48)


def test_round_trip_through_params():
    cfg = ModelConfig.from_params({"conv_blocks": 2, "kernel_size": [3, 5], "imbalance": "both"})
    assert ModelConfig.from_params(cfg.to_params()) == cfg


@pytest.mark.parametrize(
    "params, message",
    [
        ({"conv_blockz": 3}, "unknown hyperparameter 'conv_blockz'"),
        ({"conv_blocks": "three"}, "conv_blocks: expected int, got 'three'"),
        ({"conv_blocks": True}, "conv_blocks: expected int"),
        ({"dropout_rate": 0.5}, "unknown hyperparameter"),
        ({"optimizer": "adagrad"}, "optimizer: 'adagrad' is not one of adam, nadam"),
        ({"block_dropout": 1.5}, "above the maximum"),
        ({"conv_blocks": 2, "filters": [16, 32, 64]}, "filters: has 3 values but conv_blocks is 2"),
        ({"filters": 32, "base_filters": 16}, "either filters or base_filters"),
    ],
)
def test_bad_params_name_the_field(params, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        ModelConfig.from_params(params)


def test_too_deep_for_the_image_is_rejected():
    cfg = ModelConfig.from_params({"conv_blocks": 5})
    cfg.check_image_size(64, 64)
    with pytest.raises(SpecError,
                       match="5 conv blocks with pool_size 2 are too deep for 28x28 images.*at most 4 blocks"):
        cfg.check_image_size(28, 28)


def test_valid_padding_shrinkage_is_counted():
    cfg = ModelConfig.from_params({"conv_blocks": 2, "padding": "valid", "kernel_size": 5})
    with pytest.raises(SpecError, match="'valid' convolutions shrink"):
        cfg.check_image_size(20, 20)


def test_families_resolve_their_own_hyperparameters():
    resnet = ModelConfig.from_params({"family": "resnet", "resnet_stages": 3, "resnet_blocks_3": 4})
    assert resnet.resnet_blocks == (2, 2, 4) and resnet.resnet_width == 64
    backbone = ModelConfig.from_params({"family": "backbone", "backbone": "MobileNetV2", "trainable_layers": "all",
                                        "weights": "none"})
    assert backbone.trainable_layers == -1 and backbone.weights == "none"
    assert ModelConfig.from_params(backbone.to_params()) == backbone
    assert ModelConfig.from_params({"weights": "models/resnet50_notop.weights.h5"}).weights.endswith(".h5")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"family": "vit"}, "family: 'vit' is not one of cnn, resnet, backbone"),
        ({"family": "backbone"}, "family backbone needs backbone: NAME"),
        ({"family": "backbone", "backbone": "ResNet18"}, "backbone: 'ResNet18' is not one of"),
        ({"weights": "imagenet21k"}, "weights: expected imagenet, none or the path of a .h5 weights file"),
        ({"trainable_layers": "most"}, "trainable_layers: expected int"),
        ({"trainable_layers": -2}, "trainable_layers: -2 is below the minimum -1"),
        ({"family": "resnet", "resnet_stages": 3, "resnet_blocks": [1, 2]}, "has 2 values but resnet_stages is 3"),
        ({"hue": 0.6}, "hue: 0.6 is above the maximum 0.5"),
        ({"colour_constancy": "grey_world"}, "'grey_world' is not one of none, shades_of_gray"),
    ],
)
def test_bad_family_params_name_the_field(params, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        ModelConfig.from_params(params)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"family": "backbone", "backbone": "InceptionV3"},
         "InceptionV3 needs inputs of at least 75x75, got 28x28 images; set backbone_input_size"),
        ({"family": "backbone", "backbone": "MobileNetV2", "backbone_input_size": 16},
         "MobileNetV2 needs inputs of at least 32x32, got backbone_input_size 16"),
        ({"family": "resnet", "resnet_stages": 5, "resnet_stem_stride": 2, "resnet_stem_pool": True},
         r"too deep for 28x28 images \(stage 5 halves a 1x1 map\)"),
    ],
)
def test_infeasible_candidates_of_every_family_are_rejected(params, message):
    with pytest.raises(SpecError, match=message):
        ModelConfig.from_params(params).check_image_size(28, 28)


def test_feasible_candidates_pass():
    for params in ({"family": "backbone", "backbone": "InceptionV3", "backbone_input_size": 75},
                   {"family": "backbone", "backbone": "EfficientNetB0", "backbone_input_size": 32},
                   {"family": "resnet", "resnet_stages": 6},  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
                   {"family": "resnet", "resnet_stem_stride": 2, "resnet_stem_pool": True}):  # ... -> 2 -> 1
        ModelConfig.from_params(params).check_image_size(28, 28)
