import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automl.errors import SpecError
from automl.spec import find_spec, load_spec, parse_image_size, shipped_spec_names, shipped_specs_dir

SPECS = shipped_specs_dir()


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_shipped_seed000_spec_is_the_papers_model():
    spec = load_spec(SPECS / "seed000_proposed.yaml")
    cfg = spec.model_config()
    assert cfg.filters == (32, 64, 128, 256)
    assert cfg.block_dropout == (0.1, 0.2, 0.3, 0.4)
    assert cfg.dense_units == (512,) and cfg.dense_dropout == (0.5,)
    assert (cfg.optimizer, cfg.learning_rate, cfg.batch_size, cfg.imbalance) == ("adam", 1e-4, 32, "class_weight")
    assert spec.data.image_size == (28, 28)
    assert spec.training.early_stopping_patience == 10


def test_overrides_are_validated(tmp_path):
    spec = load_spec(write(tmp_path, "hyperparameters: {conv_blocks: 2}\n"))
    spec = spec.with_overrides({"data.image_size": "75x100", "training.epochs": 3, "data.split.file": "split.csv"})
    assert spec.data.image_size == (75, 100)
    assert spec.training.epochs == 3
    assert spec.data.split.method == "file"
    with pytest.raises(SpecError, match="--epochs: 0 is below the minimum 1"):
        spec.with_overrides({"training.epochs": 0})
    with pytest.raises(SpecError, match="--image-size: expected S or HEIGHTxWIDTH"):
        spec.with_overrides({"data.image_size": "big"})
    with pytest.raises(SpecError, match="--time-budget: expected a finite number"):
        spec.with_overrides({"search.time_budget_s": float("nan")})
    with pytest.raises(SpecError, match="--cpus-per-trial: expected a finite number"):
        spec.with_overrides({"search.resources.cpu": float("nan")})


def test_one_objective_for_every_stage(tmp_path):
    spec = load_spec(write(tmp_path, "objective: {metric: val_loss}\nhyperparameters: {conv_blocks: 2}\n"))
    assert (spec.objective.name, spec.objective.direction) == ("val_loss", "min")
    auc = spec.with_overrides({"objective.metric": "val_auc"})
    assert (auc.objective.name, auc.objective.direction) == ("val_auc", "max")  # the new metric's own direction
    # Specs from before the objective section: training.metric and search.metric/mode are the objective.
    legacy = load_spec(write(tmp_path, "training: {metric: val_auc}\nsearch: {metric: val_auc, mode: max}\n"))
    assert legacy.objective.name == "val_auc"
    assert load_spec(write(tmp_path, legacy.to_yaml())) == dataclasses.replace(legacy, source=tmp_path / "spec.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("training: {metric: val_auc}\nsearch: {metric: val_loss}\n",
         r"training.metric \(val_auc\) and search.metric \(val_loss\) disagree; a spec has one objective"),
        ("objective: {metric: val_auc}\nsearch: {metric: val_loss}\n", r"disagree; a spec has one objective"),
        ("objective: {metric: val_recall}\n", r"objective.metric: 'val_recall' is not one of"),
        ("hyperparameters:\n  learning_rate: .nan\n", r"learning_rate: expected a finite number"),
        ("hyperparameters:\n  dense_dropout: .nan\n", r"dense_dropout: expected a finite number"),
        ("hyperparameters:\n  learning_rate: {float: [.nan, 0.1]}\n", r"learning_rate"),
        ("data:\n  split: {fractions: [.nan, .5, .5]}\n", r"fractions\[0\]: expected a finite number"),
        ("training:\n  seed: 10000000000000000000000000000000000000000\n", r"training.seed: .* is above the maximum"),
        ("search:\n  num_samples: 10000000000000000000000000000000000000000\n",
         r"num_samples: .* is above the maximum"),
        ("search:\n  time_budget_s: .inf\n", r"time_budget_s: expected a finite number"),
        ("training:\n  epochs: 3\ntraining:\n  epochs: 4\n", r"duplicate key 'training'"),
        ("hyperparameters:\n  conv_blocks: 2\n  conv_blocks: 3\n", r"duplicate key 'conv_blocks'"),
    ],
)
def test_non_finite_out_of_range_duplicate_and_conflicting_values_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("data:\n  taks: binary\n", r"spec.yaml: data: unknown key 'taks'"),
        ("trainig: {}\n", r"spec.yaml: unknown key 'trainig'"),
        ("training:\n  epochs: ten\n", r"training.epochs: expected int, got 'ten'"),
        ("data:\n  task: ternary\n", r"data.task: 'ternary' is not one of multiclass, binary"),
        ("data:\n  image_size: [28]\n", r"data.image_size: expected an integer or \[height, width\]"),
        ("data:\n  split: {fractions: [0.8, 0.1, 0.2]}\n", r"data.split.fractions: must be positive and sum to 1"),
        ("hyperparameters:\n  conv_blocks: 2.5\n", r"hyperparameters.conv_blocks: expected int, got 2.5"),
        ("hyperparameters:\n  colour: red\n", r"unknown hyperparameter 'colour'"),
        ("data: [1, 2\n", r"not valid YAML \(line"),
        ("data: {image_size: 32}\nsearch: {image_size: 64}\n",
         r"search.image_size 64x64 is larger than data.image_size 32x32"),
        ("- a\n- b\n", r"expected a mapping of keys"),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_a_shipped_spec_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"quick", "ham10000_cnn", "seed000_proposed"} <= set(shipped_spec_names())
    assert find_spec("quick") == find_spec("quick.yaml") == SPECS / "quick.yaml"
    assert load_spec("quick").name == "quick"
    (tmp_path / "quick.yaml").write_text("name: mine\n")  # a file of that name here is what the user means
    assert load_spec("quick.yaml").name == "mine"
    # The shipped portfolio is found next to its shipped spec, wherever the package is installed.
    from automl.search._warm import find_portfolio

    spec = load_spec("ham10000_cnn")
    assert find_portfolio(spec.search.portfolio, spec.source) == (SPECS / "portfolios" / "ham10000_cnn.yaml").resolve()


def test_an_unknown_spec_name_is_one_line_listing_the_shipped_ones(tmp_path, monkeypatch, capsys):
    from automl.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["search", "quik", "--data", str(tmp_path), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "quik: no such spec file, and not a shipped spec (shipped: " in err and "quick" in err
    assert not (tmp_path / "results").exists()


def test_search_ranges_cannot_be_trained_directly(tmp_path):
    spec = load_spec(write(tmp_path, "hyperparameters:\n  conv_blocks: {choice: [2, 3]}\n"))
    with pytest.raises(SpecError, match="conv_blocks are search ranges"):
        spec.model_config()


def test_too_deep_architecture_is_a_spec_error(tmp_path):
    spec = load_spec(write(tmp_path, "hyperparameters:\n  conv_blocks: 5\n"))
    with pytest.raises(SpecError, match="too deep for 28x28"):
        spec.model_config()


def test_image_size_forms():
    assert parse_image_size(28, "x") == (28, 28)
    assert parse_image_size("75x100", "x") == (75, 100)
    assert parse_image_size([75, 100], "x") == (75, 100)


# Random YAML documents: scalars (NaN, infinities, huge ints, bools, strings), lists and nested
# mappings under the spec's own keys and under random ones.
_KEYS = st.sampled_from(["name", "data", "task", "image_size", "split", "fractions", "seed", "file", "method",
                         "training", "epochs", "early_stopping_patience", "reduce_lr_factor", "objective", "metric",
                         "mode", "search", "num_samples", "resources", "cpu", "time_budget_s", "hyperparameters",
                         "conv_blocks", "learning_rate", "dense_dropout", "family", "choice", "float", "when", "x"])
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
            | st.sampled_from(["val_auc", "val_loss", "max", "min", "grouped", "file", "resnet", "28", "8x8"]))
_DOCUMENTS = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner,
                                                                                                  max_size=5),
                          max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_DOCUMENTS)
def test_any_yaml_document_is_a_spec_or_one_clear_error(tmp_path, document):
    path = write(tmp_path, yaml.safe_dump(document))
    try:
        spec = load_spec(path)
    except SpecError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    # What validation accepts is usable: it round-trips, and a fixed spec resolves to a model config or says why not.
    assert load_spec(write(tmp_path, spec.to_yaml())).objective == spec.objective
    try:
        spec.model_config()
    except SpecError:
        pass


def test_search_budget_and_tpe_settings(tmp_path):
    from automl.cli import _overrides, build_parser

    spec = load_spec(SPECS / "ham10000_cnn.yaml")
    assert spec.search.epoch_budget is None and spec.search.tpe_sampling == "multivariate"
    assert spec.search.tpe_constant_liar is True
    # TPE's start-up trials scale with the budget unless set.
    assert [spec.with_overrides({"search.num_samples": n}).search.tpe_startup() for n in (4, 40, 1000)] == [5, 8, 200]
    assert spec.with_overrides({"search.tpe_startup_trials": 3}).search.tpe_startup() == 3
    # With an epoch budget, to the configurations it lets ASHA see: rungs at 2, 6, 18 of 20 epochs spend about
    # 4.7 epochs per configuration (x 1.3, ASHA's generous early promotions), so 200 epochs see about 32.
    budgeted = spec.with_overrides({"search.num_samples": 1000, "search.epoch_budget": 200}).search
    assert budgeted.asha_rungs() == [2, 6, 18] and budgeted.expected_configurations() == 32
    assert budgeted.tpe_startup() == 6
    unbounded = spec.with_overrides({"search.epoch_budget": 10**6}).search
    assert unbounded.expected_configurations() == spec.search.num_samples
    no_asha = spec.with_overrides({"search.epoch_budget": 200, "search.scheduler": "none"}).search
    assert no_asha.expected_configurations() == 10  # every trial runs max_epochs
    args = build_parser().parse_args(["search", str(SPECS / "ham10000_cnn.yaml"), "--data", "d", "--name", "n",
                                      "--epoch-budget", "30", "--no-tpe-constant-liar",
                                      "--tpe-sampling", "grouped", "--snapshot-period", "30"])
    overridden = spec.with_overrides(_overrides(args, "search"))
    assert (overridden.search.epoch_budget, overridden.search.tpe_constant_liar) == (30, False)
    assert overridden.search.snapshot_period_s == 30.0 and spec.search.snapshot_period_s is None  # None: Tune's auto
    assert overridden.search.tpe_sampling == "grouped"
    assert load_spec(write(tmp_path, overridden.to_yaml())).search == overridden.search  # spec.yaml round trip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "s.yaml", "--data", "d", "--name", "n", "--tpe-constant-liar", "maybe"])
    assert [budgeted.budget_spent(n) for n in (0, 199, 200, 201)] == [False, False, True, True]
    assert not spec.search.budget_spent(10**9)  # no epoch budget: never spent
    with pytest.raises(SpecError, match="--epoch-budget: 0 is below the minimum 1"):
        spec.with_overrides({"search.epoch_budget": 0})


def test_a_search_trains_at_search_image_size_and_every_later_stage_at_data_image_size(tmp_path):
    spec = load_spec(write(tmp_path, "data: {image_size: 96}\nsearch: {image_size: [24, 32]}\n"))
    assert spec.search_image_size == (24, 32) and spec.search_dataset_args()["image_size"] == (24, 32)
    assert spec.data.dataset_args()["image_size"] == (96, 96)
    assert load_spec(write(tmp_path, "data: {image_size: 64}\n")).search_image_size == (64, 64)  # by default
    assert spec.with_overrides({"search.image_size": "48"}).search_image_size == (48, 48)  # --search-image-size
