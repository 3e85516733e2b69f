"""Spec files: parsed and validated once, at the edge, into typed objects.

A spec is a YAML file with these sections (every key optional unless said)::

    name: seed000_proposed            # free text, used in reports
    data:
      task: multiclass                # multiclass (7 dx classes) | binary (malignant = mel, bcc, akiec)
      image_size: 28                  # S or [height, width]
      split:
        method: grouped               # grouped (by lesion_id, stratified by dx) | file
        fractions: [0.70, 0.15, 0.15] # train/val/test
        seed: 0
        file: dermamnist_split.csv    # method: file; image_id,split with train|val|test
    training:
      epochs: 50
      early_stopping_patience: 10     # epochs without improvement of `metric`; 0 = off
      reduce_lr_patience: 0           # epochs without improvement before the lr is cut; 0 = off
      reduce_lr_factor: 0.5
      metric: val_balanced_accuracy
      seed: 0
    hyperparameters:                  # names and domains: automl.hparams.HYPERPARAMETERS
      conv_blocks: 4                  # a fixed value, or a dimension (automl.space):
      learning_rate: {float: [1.0e-4, 1.0e-2], log: true}
    search:                           # automl search only
      engine: ray                     # ray | keras-tuner
      searcher: optuna                # random | optuna (TPE)
      scheduler: asha                 # asha | none
      keras_tuner: hyperband          # engine keras-tuner: hyperband | bayesian | random
      num_samples: 20
      max_epochs: 20
      grace_period: 2                 # ASHA: epochs every trial gets
      reduction_factor: 3             # ASHA: 1/this of the trials go on at each rung
      metric: val_balanced_accuracy
      mode: max                       # default: min for losses, max otherwise
      max_concurrent: 2
      resources: {cpu: 1, gpu: 0}     # per trial; gpu may be fractional
      time_budget_s: null             # stop starting trials after this many seconds
      max_failures: 2                 # a failing trial is retried from its last checkpoint
      seed: 0

Unknown keys and values of the wrong type are errors that name the file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.space import SearchSpace

TASKS = ("multiclass", "binary")
METRICS = ("val_balanced_accuracy", "val_macro_f1", "val_accuracy", "val_auc", "val_loss")


def metric_mode(metric: str) -> str:
    """'min' for losses, 'max' for scores."""
    return "min" if metric.endswith("loss") else "max"


@dataclass(frozen=True)
class SplitSpec:
    method: str = "grouped"
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0
    file: Path | None = None


@dataclass(frozen=True)
class DataSpec:
    task: str = "multiclass"
    image_size: tuple[int, int] = (28, 28)
    split: SplitSpec = field(default_factory=SplitSpec)

    def dataset_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`automl.data.load_dataset` for this data section."""
        return {
            "image_size": self.image_size,
            "task": self.task,
            "split_method": self.split.method,
            "fractions": self.split.fractions,
            "split_seed": self.split.seed,
            "split_file": self.split.file,
        }


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int = 50
    early_stopping_patience: int = 10
    reduce_lr_patience: int = 0
    reduce_lr_factor: float = 0.5
    metric: str = "val_balanced_accuracy"
    seed: int = 0


@dataclass(frozen=True)
class SearchSettings:
    engine: str = "ray"
    searcher: str = "optuna"
    scheduler: str = "asha"
    keras_tuner: str = "hyperband"
    num_samples: int = 20
    max_epochs: int = 20
    grace_period: int = 2
    reduction_factor: int = 3
    metric: str = "val_balanced_accuracy"
    mode: str = "max"
    max_concurrent: int = 2
    cpu: float = 1.0
    gpu: float = 0.0
    time_budget_s: float | None = None
    max_failures: int = 2
    seed: int = 0


#: Search settings the command line can override (each is validated like the spec file's).
SEARCH_OVERRIDES = tuple(f.name for f in dataclasses.fields(SearchSettings))


@dataclass(frozen=True)
class Spec:
    name: str
    data: DataSpec
    training: TrainingSpec
    hyperparameters: Mapping[str, Any]
    search: SearchSettings = field(default_factory=SearchSettings)
    description: str = ""
    source: Path | None = None

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.parse(self.hyperparameters, where=f"{self.source or 'spec'}: hyperparameters")

    def model_config(self) -> ModelConfig:
        """The single candidate a fixed spec describes (what ``automl train`` runs)."""
        ranged = [name for name, value in self.hyperparameters.items() if isinstance(value, Mapping)]
        if ranged:
            raise SpecError(
                f"{self.source or 'spec'}: hyperparameters {', '.join(ranged)} are search ranges; "
                "automl train needs one fixed value for each (automl search explores ranges)"
            )
        where = f"{self.source or 'spec'}: hyperparameters"
        config = ModelConfig.from_params(self.hyperparameters, where=where)
        config.check_image_size(*self.data.image_size, where=where)
        return config

    def to_yaml(self) -> str:
        """The resolved spec as YAML that :func:`load_spec` reads back to an equal spec."""
        search = dataclasses.asdict(self.search)
        search["resources"] = {"cpu": search.pop("cpu"), "gpu": search.pop("gpu")}
        split = {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self.data.split).items()
            if v is not None
        }
        resolved = {
            "name": self.name,
            "description": self.description,
            "data": {"task": self.data.task, "image_size": list(self.data.image_size), "split": split},
            "training": dataclasses.asdict(self.training),
            "hyperparameters": dict(self.hyperparameters),
            "search": search,
        }
        return yaml.safe_dump(resolved, sort_keys=False)

    def with_overrides(self, **overrides: Any) -> Spec:
        """A copy with command-line overrides applied (``None`` means not given), validated like the file."""
        data, training = self.data, self.training
        if overrides.get("image_size") is not None:
            data = dataclasses.replace(data, image_size=parse_image_size(overrides["image_size"], "--image-size"))
        if overrides.get("split_file") is not None:
            split = dataclasses.replace(data.split, method="file", file=Path(overrides["split_file"]))
            data = dataclasses.replace(data, split=split)
        if overrides.get("task") is not None:
            data = dataclasses.replace(data, task=_choice(overrides["task"], TASKS, "--task"))
        if overrides.get("epochs") is not None:
            training = dataclasses.replace(training, epochs=_int(overrides["epochs"], "--epochs", low=1))
        if overrides.get("seed") is not None:
            training = dataclasses.replace(training, seed=_int(overrides["seed"], "--seed", low=0))
        search = self.search
        given = {k: v for k, v in (overrides.get("search") or {}).items() if v is not None}
        if given:
            raw = dataclasses.asdict(search)
            resources = {"cpu": raw.pop("cpu"), "gpu": raw.pop("gpu")}
            for key, value in given.items():
                if key in ("cpu", "gpu"):
                    resources[key] = value
                else:
                    raw[key] = value
            if "metric" in given and "mode" not in given:
                raw["mode"] = None
            search = _parse_search(raw | {"resources": resources}, "command line")
        return dataclasses.replace(self, data=data, training=training, search=search)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from None
    return parse_spec(raw if raw is not None else {}, source=path)


def parse_spec(raw: Any, source: Path | None = None) -> Spec:
    """Validate an already-loaded spec mapping."""
    where = str(source) if source else "spec"
    top = _Section(raw, where)
    name = top.get("name", str, default=source.stem if source else "spec")
    description = top.get("description", str, default="")

    data_raw = _Section(top.get("data", dict, default={}), f"{where}: data")
    split_raw = _Section(data_raw.get("split", dict, default={}), f"{where}: data.split")
    split = SplitSpec(
        method=split_raw.get("method", str, default="grouped", choices=("grouped", "file")),
        fractions=_fractions(split_raw.get("fractions", list, default=[0.70, 0.15, 0.15]), f"{where}: data.split.fractions"),
        seed=split_raw.get("seed", int, default=0, low=0),
        file=_optional_path(split_raw.get("file", str, default=None)),
    )
    split_raw.finish()
    if split.method == "file" and split.file is None:
        raise SpecError(f"{where}: data.split: method 'file' needs file: PATH (a CSV of image_id,split)")
    if split.method == "grouped" and split.file is not None:
        split = dataclasses.replace(split, method="file")
    data = DataSpec(
        task=data_raw.get("task", str, default="multiclass", choices=TASKS),
        image_size=parse_image_size(data_raw.get("image_size", (int, list), default=28), f"{where}: data.image_size"),
        split=split,
    )
    data_raw.finish()

    train_raw = _Section(top.get("training", dict, default={}), f"{where}: training")
    training = TrainingSpec(
        epochs=train_raw.get("epochs", int, default=50, low=1),
        early_stopping_patience=train_raw.get("early_stopping_patience", int, default=10, low=0),
        reduce_lr_patience=train_raw.get("reduce_lr_patience", int, default=0, low=0),
        reduce_lr_factor=train_raw.get("reduce_lr_factor", float, default=0.5, low=0.01, high=0.99),
        metric=train_raw.get("metric", str, default="val_balanced_accuracy", choices=METRICS),
        seed=train_raw.get("seed", int, default=0, low=0),
    )
    train_raw.finish()

    hyperparameters = {str(k): v for k, v in top.get("hyperparameters", dict, default={}).items()}
    SearchSpace.parse(hyperparameters, where=f"{where}: hyperparameters")  # every entry validated here
    search = _parse_search(top.get("search", dict, default={}), f"{where}: search")
    top.finish()
    return Spec(name, data, training, hyperparameters, search, description, source)


def _parse_search(raw: Any, where: str) -> SearchSettings:
    section = _Section(raw, where)
    resources = _Section(section.get("resources", dict, default={}), f"{where}.resources" if ":" in where else f"{where}: resources")
    metric = section.get("metric", str, default="val_balanced_accuracy", choices=METRICS)
    settings = SearchSettings(
        engine=section.get("engine", str, default="ray", choices=("ray", "keras-tuner")),
        searcher=section.get("searcher", str, default="optuna", choices=("random", "optuna")),
        scheduler=section.get("scheduler", str, default="asha", choices=("asha", "none")),
        keras_tuner=section.get("keras_tuner", str, default="hyperband", choices=("hyperband", "bayesian", "random")),
        num_samples=section.get("num_samples", int, default=20, low=1),
        max_epochs=section.get("max_epochs", int, default=20, low=1),
        grace_period=section.get("grace_period", int, default=2, low=1),
        reduction_factor=section.get("reduction_factor", int, default=3, low=2),
        metric=metric,
        mode=section.get("mode", str, default=metric_mode(metric), choices=("min", "max")),
        max_concurrent=section.get("max_concurrent", int, default=2, low=1),
        cpu=resources.get("cpu", float, default=1.0, low=0.0),
        gpu=resources.get("gpu", float, default=0.0, low=0.0),
        time_budget_s=section.get("time_budget_s", float, default=None, low=1.0),
        max_failures=section.get("max_failures", int, default=2, low=0),
        seed=section.get("seed", int, default=0, low=0),
    )
    resources.finish()
    section.finish()
    if settings.grace_period > settings.max_epochs:
        raise SpecError(f"{where}: grace_period ({settings.grace_period}) exceeds max_epochs ({settings.max_epochs})")
    return settings


def parse_image_size(value: Any, where: str) -> tuple[int, int]:
    """``28``, ``"28"``, ``"75x100"`` (height x width) or ``[75, 100]`` to ``(height, width)``."""
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            value = [int(p) for p in parts] if len(parts) == 2 else int(value)
        except ValueError:
            raise SpecError(f"{where}: expected S or HEIGHTxWIDTH, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise SpecError(f"{where}: expected an integer or [height, width], got {value!r}")
    if not all(8 <= v <= 2048 for v in value):
        raise SpecError(f"{where}: sizes must be between 8 and 2048 pixels, got {value!r}")
    return int(value[0]), int(value[1])


class _Section:
    """Reads the keys of one mapping, type-checked, and rejects the keys nobody read."""

    def __init__(self, raw: Any, where: str):
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
        self.raw, self.where, self.seen = raw, where, set()

    def get(self, key, types, default=None, choices=None, low=None, high=None):
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            return default
        value = self.raw[key]
        types = types if isinstance(types, tuple) else (types,)
        at = f"{self.where}.{key}" if ":" in self.where else f"{self.where}: {key}"
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise SpecError(f"{at}: expected {names}, got {value!r}")
        if choices is not None and value not in choices:
            raise SpecError(f"{at}: {value!r} is not one of {', '.join(choices)}")
        if low is not None and value < low:
            raise SpecError(f"{at}: {value!r} is below the minimum {low}")
        if high is not None and value > high:
            raise SpecError(f"{at}: {value!r} is above the maximum {high}")
        return value

    def finish(self) -> None:
        unknown = [str(k) for k in self.raw if k not in self.seen]
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise SpecError(f"{self.where}: unknown key {unknown[0]!r} (known here: {known})")


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _int(value: Any, where: str, low: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: expected an integer, got {value!r}") from None
    if number < low:
        raise SpecError(f"{where}: must be at least {low}, got {number}")
    return number


def _fractions(value: list, where: str) -> tuple[float, float, float]:
    if len(value) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise SpecError(f"{where}: expected three numbers [train, val, test], got {value!r}")
    if abs(sum(value) - 1.0) > 1e-6 or min(value) <= 0:
        raise SpecError(f"{where}: must be positive and sum to 1, got {value!r}")
    return tuple(float(v) for v in value)


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
