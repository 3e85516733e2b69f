from pathlib import Path

import pytest

from automl.errors import SpecError
from automl.spec import load_spec, parse_image_size

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"


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
    spec = spec.with_overrides(image_size="75x100", epochs=3, split_file="split.csv")
    assert spec.data.image_size == (75, 100)
    assert spec.training.epochs == 3
    assert spec.data.split.method == "file"
    with pytest.raises(SpecError, match="--epochs: must be at least 1"):
        spec.with_overrides(epochs=0)
    with pytest.raises(SpecError, match="--image-size: expected S or HEIGHTxWIDTH"):
        spec.with_overrides(image_size="big")


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
        ("- a\n- b\n", r"expected a mapping of keys"),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


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
