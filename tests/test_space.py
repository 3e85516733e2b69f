import optuna
import pytest

from automl.errors import InfeasibleError, SpecError
from automl.space import SearchSpace

SPACE = {
    "conv_blocks": {"choice": [2, 3, 4]},
    "base_filters": {"int": [8, 32], "step": 8},
    "learning_rate": {"float": [1e-4, 1e-2], "log": True},
    "block_dropout_4": {"float": [0.0, 0.5], "when": "conv_blocks >= 4"},
    "imbalance": "class_weight",
}


def test_active_drops_dimensions_whose_condition_fails():
    space = SearchSpace.parse(SPACE)
    assert "block_dropout_4" not in space.active({"conv_blocks": 3, "block_dropout_4": 0.2})
    assert space.active({"conv_blocks": 4, "block_dropout_4": 0.2})["block_dropout_4"] == 0.2
    assert [d.name for d in space.searched] == ["conv_blocks", "base_filters", "learning_rate", "block_dropout_4"]


def test_optuna_samples_conditional_dimensions_only_when_they_exist():
    space = SearchSpace.parse(SPACE)
    define = space.optuna_define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        constants = define(trial)
        assert constants == {"imbalance": "class_weight"}
        assert ("block_dropout_4" in trial.params) == (trial.params["conv_blocks"] >= 4)
        assert trial.params["base_filters"] in (8, 16, 24, 32)
        assert 1e-4 <= trial.params["learning_rate"] <= 1e-2
        study.tell(trial, 0.5)


def test_ray_param_space_samples_inside_bounds():
    from ray.tune.search.variant_generator import generate_variants

    space = SearchSpace.parse(SPACE).ray_param_space()
    for _ in range(20):
        _, config = next(generate_variants(space))
        assert config["conv_blocks"] in (2, 3, 4) and config["base_filters"] in (8, 16, 24, 32)
        assert 1e-4 <= config["learning_rate"] <= 1e-2


def test_keras_tuner_hyperparameters_carry_conditions():
    hp = SearchSpace.parse(SPACE).keras_tuner_hyperparameters()
    dropout = hp._hps["block_dropout_4"][0]
    assert dropout.conditions[0].name == "conv_blocks" and list(dropout.conditions[0].values) == [4]
    assert hp.values["imbalance"] == "class_weight"


@pytest.mark.parametrize(
    "space, message",
    [
        ({"conv_blocks": {"choice": []}}, "conv_blocks.choice: expected a non-empty list"),
        ({"conv_blocks": {"choice": [2, "x"]}}, r"conv_blocks.choice\[1\]: expected int"),
        ({"optimizer": {"choice": ["adam", "lion"]}}, "'lion' is not one of"),
        ({"learning_rate": {"float": [0.1, 0.01]}}, "low must be below high"),
        ({"dense_dropout": {"float": [0, 0.5], "log": True}}, "a log range needs a positive low bound"),
        ({"dense_units": {"int": [16, 64], "stride": 2}}, "unknown key 'stride'"),
        ({"dense_units": {"int": [16, 64], "choice": [1]}}, "give exactly one of"),
        ({"block_dropout_4": {"float": [0, 0.5], "when": "conv_blocks >= 4"}}, "refers to 'conv_blocks', which is not"),
        ({"block_dropout_4": {"float": [0, 0.5], "when": "conv_blocks >= 4"}, "conv_blocks": 4},
         "list 'conv_blocks' before"),
        ({"conv_blocks": {"choice": [2]}, "block_dropout_4": {"float": [0, 0.5], "when": "conv_blocks is big"}},
         "expected 'NAME OP VALUE'"),
    ],
)
def test_bad_dimensions_are_spec_errors(space, message):
    with pytest.raises(SpecError, match=message):
        SearchSpace.parse(space)


def test_active_maps_engine_values_back_to_the_dimension_values():
    space = SearchSpace.parse({"batch_norm": {"choice": [True, False]}, "rotation": {"choice": [0.0, 45.0]}})
    # KerasTuner returns a bool choice as 1/0 and may return 45 for 45.0.
    active = space.active({"batch_norm": 1, "rotation": 45})
    assert active["batch_norm"] is True and isinstance(active["rotation"], float)


def test_conditions_on_a_string_choice_in_every_engine():
    space = SearchSpace.parse({
        "family": {"choice": ["cnn", "resnet", "backbone"]},
        "conv_blocks": {"choice": [2, 3], "when": "family == cnn"},
        "resnet_width": {"choice": [16, 32], "when": "family == resnet"},
        "backbone": {"choice": ["MobileNetV2", "EfficientNetB0"], "when": "family == backbone"},
        "weights": {"fixed": "none", "when": "family in [backbone]"},
    })
    assert space.active({"family": "resnet", "conv_blocks": 2, "resnet_width": 16, "backbone": "MobileNetV2",
                         "weights": "none"}) == {"family": "resnet", "resnet_width": 16}
    define, study = space.optuna_define_by_run(), optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    families = set()
    for _ in range(30):
        trial = study.ask()
        constants = define(trial)
        family = trial.params["family"]
        families.add(family)
        assert ("conv_blocks" in trial.params) == (family == "cnn")
        assert ("resnet_width" in trial.params) == (family == "resnet")
        assert ("backbone" in trial.params) == (constants == {"weights": "none"}) == (family == "backbone")
        study.tell(trial, 0.5)
    assert families == {"cnn", "resnet", "backbone"}
    hp = space.keras_tuner_hyperparameters()
    assert list(hp._hps["backbone"][0].conditions[0].values) == ["backbone"]
    assert list(hp._hps["conv_blocks"][0].conditions[0].values) == ["cnn"]


@pytest.mark.parametrize("config, kind", [
    ({"conv_blocks": 5, "pool_size": 2}, "pooling"),  # 16 -> 8 -> 4 -> 2 -> 1 -> 0
    ({"conv_blocks": 3, "padding": "valid", "kernel_size": 5, "convs_per_block": 2, "pool_size": 2}, "valid_padding"),
    ({"family": "resnet", "resnet_stages": 6, "resnet_stem_stride": 2}, "resnet_depth"),
    ({"family": "backbone", "backbone": "InceptionV3"}, "backbone_input"),
])
def test_infeasible_names_the_rule_a_draw_breaks_without_building_it(config, kind):
    space = SearchSpace.parse({name: {"choice": [value]} for name, value in config.items()})
    error = space.infeasible(config, (16, 16))
    assert isinstance(error, InfeasibleError) and error.kind == kind
    assert "16x16" in str(error)
    assert space.infeasible(config, (512, 512)) is None


def test_infeasible_checks_only_the_active_dimensions():
    space = SearchSpace.parse({"conv_blocks": {"choice": [1, 4]},
                               "pool_size": {"choice": [2, 4], "when": "conv_blocks >= 4"}})
    # pool_size 4 is dropped with one block (the default pool size, 2, fits); with four blocks it is too deep.
    assert space.infeasible({"conv_blocks": 1, "pool_size": 4}, (16, 16)) is None
    assert space.infeasible({"conv_blocks": 4, "pool_size": 4}, (16, 16)).kind == "pooling"
    assert space.infeasible({"conv_blocks": 4, "pool_size": 2}, (16, 16)) is None
