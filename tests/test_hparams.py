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
