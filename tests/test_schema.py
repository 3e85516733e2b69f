"""The JSON Schema of spec files: shipped current, named by every shipped spec, passed by every shipped spec, and
failed by the mistakes that load_spec refuses."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from automl.errors import SpecError
from automl.schema import SCHEMA_FILE, json_schema, schema_text
from automl.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = next(d for d in (ROOT / "automl/search_spaces", ROOT / "search_spaces") if d.is_dir())
SPECS = sorted(SPEC_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text() == schema_text(), "automl/spec.schema.json is stale: run python -m automl.schema"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_names_the_schema_and_passes_it(path, validator):
    first = path.read_text().splitlines()[0]
    named = first.removeprefix("# yaml-language-server: $schema=")
    assert named != first, f"{path.name}: first line does not name the schema"
    assert (path.parent / named).resolve() == SCHEMA_FILE.resolve(), named
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


def test_specs_are_found():
    assert len(SPECS) >= 5 and any(p.name == "quick.yaml" for p in SPECS)


@pytest.mark.parametrize("raw", [
    {"data": {"task": "ternary"}},                                          # not a choice
    {"search": {"num_samples": 0}},                                         # below the minimum
    {"search": {"resources": {"cpus": 2}}},                                 # unknown key in a nested section
    {"data": {"image_size": 4}},                                            # below 8 px
    {"trainnig": {"epochs": 3}},                                            # unknown section
    {"hyperparameters": {"conv_blocks": {"choice": [2, 3], "int": [1, 2]}}},  # two kinds of dimension
    {"hyperparameters": {"conv_blocks": {"int": [1, 2], "lg": True}}},     # unknown dimension key
    {"hyperparameters": {"convblocks": 3}},                                 # unknown hyperparameter
    {"hyperparameters": {"padding": "full"}},                              # not a choice
    {"hyperparameters": {"block_dropout_2": [0.1, 0.2]}},                  # an indexed name takes one value
    {"hyperparameters": {"learning_rate": {"float": [0.1]}}},               # a range needs two bounds
    {"hyperparameters": {"dense_units": {"fixed": 64, "when": "dense_layers"}}},  # not a condition
])
def test_mistakes_fail_the_schema_as_they_fail_load_spec(raw, validator):
    assert list(validator.iter_errors(raw))
    with pytest.raises(SpecError):
        parse_spec(raw)


@pytest.mark.parametrize("raw", [
    {},
    {"data": {"image_size": "75x100", "split": {"file": "split.csv"}}, "search": {"warm_start": "ref", "seed": 3}},
    {"training": {"metric": "val_auc"}, "search": None,
     "hyperparameters": {"weights": None, "trainable_layers": "all"}},
    {"hyperparameters": {"conv_blocks": {"choice": [2, 4]}, "block_dropout": [0.1, 0.2],
                         "block_dropout_4": {"float": [0.0, 0.5], "when": "conv_blocks >= 4"},
                         "dense_units": {"int": [64, 512], "step": 64}, "family": {"fixed": "cnn"},
                         "learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True}}},
])
def test_what_load_spec_takes_passes_the_schema(raw, validator):
    parse_spec(raw)
    assert not [e.message for e in validator.iter_errors(raw)]


def test_every_setting_and_hyperparameter_is_in_the_schema():
    from automl.hparams import HYPERPARAMETERS
    from automl.spec import SETTINGS

    schema = json_schema()
    for key in SETTINGS:
        node = schema
        for part in key.split("."):
            node = node["properties"][part]
        assert "description" in node, key
    assert set(schema["properties"]["hyperparameters"]["properties"]) == set(HYPERPARAMETERS)
