"""The JSON Schema of spec files, generated from the tables that validate them.

:func:`json_schema` reads :data:`automl.spec.SETTINGS` (every setting's type, domain and default) and
:data:`automl.hparams.HYPERPARAMETERS` (every hyperparameter's), plus the dimension grammar of
:mod:`automl.space` (``choice``, ``int``, ``float``, ``fixed``, ``step``, ``log``, ``when``), so that an editor
with a YAML language server completes and checks a spec as it is typed. The package ships the result as
``automl/spec.schema.json`` (:data:`SCHEMA_FILE`); ``python -m automl.schema`` writes it again after a table
changes, and a test checks that the shipped file is what this function makes. The schema is a help for
editors: :func:`automl.spec.load_spec` stays the judge (it also checks what a schema cannot say, such as
fractions that sum to 1 or a condition's parent being defined earlier).

>>> schema = json_schema()
>>> schema["properties"]["search"]["properties"]["num_samples"]["default"]
20
>>> sorted(schema["properties"]["hyperparameters"]["properties"]["imbalance"]["anyOf"][0]["enum"])
['both', 'class_weight', 'none', 'oversample']
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from automl import space, spec
from automl.hparams import HYPERPARAMETERS, PER, Hyperparameter, _trainable_layers, _weights

#: The schema file shipped with the package; specs name it in a ``# yaml-language-server: $schema=`` first line.
SCHEMA_FILE = Path(__file__).with_name("spec.schema.json")

_IMAGE_SIZE = {"anyOf": [
    {"type": "integer", "minimum": 8, "maximum": 2048},
    {"type": "string", "pattern": r"^[0-9]+([xX][0-9]+)?$"},
    {"type": "array", "items": {"type": "integer", "minimum": 8, "maximum": 2048}, "minItems": 2, "maxItems": 2},
]}
_FILE = {"type": "string", "minLength": 1}
#: The value forms of settings and hyperparameters that ``parse`` reads instead of the plain type check.
_PARSED = {
    spec.parse_image_size: _IMAGE_SIZE,
    spec._fractions: {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3,
                      "maxItems": 3},
    spec._path: _FILE,
    spec._file_or_none: _FILE,
    spec._names: {"anyOf": [_FILE, {"type": "array", "items": _FILE}]},
    _weights: {"anyOf": [{"enum": ["imagenet", "none", None]}, {"type": "string", "pattern": r"\.h5$"}]},
    _trainable_layers: {"anyOf": [{"type": "integer", "minimum": -1, "maximum": 100_000}, {"const": "all"}]},
}
_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
#: The keys of a dimension that do not depend on its hyperparameter (automl.space).
_GRAMMAR = {
    "step": {"type": "number", "exclusiveMinimum": 0, "description": "grid of an int or float range"},
    "log": {"type": "boolean", "description": "sample an int or float range on a log scale"},
    "when": {"type": "string", "pattern": space._CONDITION.pattern,
             "description": "NAME OP VALUE (OP one of ==, !=, <, <=, >, >=, in): the entry exists only when this "
                            "holds for an earlier entry"},
}


def _plain(value: Any) -> Any:
    """A default as YAML (and JSON) writes it: tuples as lists, paths as text."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _value(entry: spec.Setting | Hyperparameter) -> dict:
    """The schema of one value of a setting or a hyperparameter (its type, choices, bounds)."""
    if entry.parse is not None:
        if entry.parse not in _PARSED:
            raise KeyError(f"{getattr(entry, 'key', None) or entry.name}: no schema for values read by "
                           f"{entry.parse.__name__}; add it to automl.schema._PARSED")
        return dict(_PARSED[entry.parse])
    if entry.choices is not None:
        return {"enum": list(entry.choices)}
    schema: dict[str, Any] = {"type": _TYPES[entry.type]}
    if entry.low is not None:
        schema["minimum"] = entry.low
    if entry.high is not None:
        schema["maximum"] = entry.high
    return schema


def _described(schema: dict, text: str, default: Any) -> dict:
    schema = {"description": text, **schema}
    if default is not None:
        schema["default"] = _plain(default)
    return schema


def _hyperparameter(hp: Hyperparameter, indexed: bool = False) -> dict:
    """A hyperparameter's entry: a fixed value (for a per-layer one, also a list of one per layer) or a dimension."""
    one = _value(hp)
    fixed = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if hp.per and not indexed else one
    bound = {"type": "array", "items": one, "minItems": 2, "maxItems": 2}
    dimension = {
        "type": "object",
        "properties": {
            "choice": {"type": "array", "items": fixed, "minItems": 1, "description": "the values to choose from"},
            "int": {**bound, "description": "[low, high], integers, both included"},
            "float": {**bound, "description": "[low, high]"},
            "fixed": {**fixed, "description": "one value (with when: a value that exists only under a condition)"},
            **{key: {"$ref": f"#/$defs/{key}"} for key in _GRAMMAR},
        },
        "additionalProperties": False,
        "oneOf": [{"required": [kind]} for kind in ("choice", "int", "float", "fixed")],
    }
    per = f" (one value, or a list of one per {hp.per}, counted by {PER[hp.per]})" if hp.per and not indexed else ""
    text = (f"{hp.name}_I: {hp.name} of {hp.per} I only (1-based)" if indexed else hp.help + per)
    return _described({"anyOf": [fixed, dimension]}, text, None if indexed else hp.default)


def _section(properties: dict, text: str | None = None) -> dict:
    schema = {"type": ["object", "null"], "properties": properties, "additionalProperties": False}
    return {"description": text, **schema} if text else schema


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a spec file, from ``SETTINGS``, ``HYPERPARAMETERS`` and the grammar."""
    root: dict[str, Any] = {}
    for key, setting in spec.SETTINGS.items():
        *sections, last = key.split(".")
        node = root
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = _described({"anyOf": [_value(setting), {"type": "null"}]}, setting.help, setting.default)
    for old, new in spec.LEGACY_OBJECTIVE_KEYS.items():  # still read; say where they went
        section, _, last = old.partition(".")
        metric = spec.SETTINGS[new]
        root[section][last] = {"description": f"old spelling of {new}: set {new} instead",
                               "anyOf": [_value(metric), {"type": "null"}], "deprecated": True}

    def nest(tree: dict) -> dict:
        return {k: v if "anyOf" in v else _section(nest(v)) for k, v in tree.items()}  # a setting, or a section

    properties = nest(root)
    hyperparameters = {name: _hyperparameter(hp) for name, hp in HYPERPARAMETERS.items()}
    indexed = {f"^{name}_[1-9][0-9]*$": _hyperparameter(hp, indexed=True)
               for name, hp in HYPERPARAMETERS.items() if hp.per}
    properties["hyperparameters"] = {
        "description": "hyperparameter names to fixed values or dimensions (choice, int, float, fixed; step, log, "
                       "when): automl.hparams.HYPERPARAMETERS",
        "type": ["object", "null"], "properties": hyperparameters, "patternProperties": indexed,
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "skin-automl spec file",
        "description": "Generated from automl.spec.SETTINGS and automl.hparams.HYPERPARAMETERS by "
                       "automl.schema.json_schema(); do not edit, run python -m automl.schema.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "$defs": _GRAMMAR,
    }


def schema_text() -> str:
    """The schema as the shipped file holds it."""
    return json.dumps(json_schema(), indent=1) + "\n"


def main() -> int:
    """Write :data:`SCHEMA_FILE` (atomically) and say where."""
    from automl.files import atomic_write

    atomic_write(SCHEMA_FILE, schema_text())
    print(f"wrote {SCHEMA_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
