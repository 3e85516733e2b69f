"""Spec files: parsed and validated once, at the edge, into typed objects.

A spec is a YAML file with these sections (every key optional; defaults, domains and command-line
flags are declared once, in :data:`SETTINGS`)::

    name: seed000_proposed            # free text, used in reports
    data:
      task: multiclass                # multiclass (7 dx classes) | binary (malignant = mel, bcc, akiec)
      image_size: 28                  # S or [height, width]
      split:
        method: grouped               # grouped (by lesion_id, stratified by dx) | file
        fractions: [0.70, 0.15, 0.15] # train/val/test
        seed: 0
        file: dermamnist_split.csv    # method: file; image_id,split with train|val|test
    objective:                        # what every stage optimises (automl.objective)
      metric: val_balanced_accuracy
      mode: max                       # default: min for val_loss, max otherwise
    training:
      epochs: 50
      early_stopping_patience: 10     # epochs without improvement of the objective; 0 = off
      reduce_lr_patience: 0           # epochs without improvement before the lr is cut; 0 = off
      reduce_lr_factor: 0.5
      seed: 0
      max_parameters: 5000000         # larger candidates are not trained (optional)
      precision: auto                 # float32 | mixed_float16 | mixed_bfloat16 | auto (by device)
    hyperparameters:                  # names and domains: automl.hparams.HYPERPARAMETERS
      conv_blocks: 4                  # a fixed value, or a dimension (automl.space):
      learning_rate: {float: [1.0e-4, 1.0e-2], log: true}
    search:                           # automl search only
      engine: ray                     # ray | keras-tuner
      searcher: optuna                # random | optuna (TPE)
      ...                             # see SETTINGS
    retrain:                          # automl run and automl retrain
      top_k: 5                        # configurations retrained from scratch
      seeds: 1                        # trainings of each (members = top_k x seeds)

The objective is the one source of the metric: the search, the retrain's early stopping and
learning-rate schedule, the ensemble and the reports all use it, and so does ``automl train``.
Specs written before it had a section of its own set ``training.metric`` and ``search.metric``/
``search.mode``; those keys are still read as the objective, and a spec whose keys disagree is an
error. Unknown keys, duplicate keys, values of the wrong type, NaN or infinity and values out of
range are errors that name the file and the field.

>>> spec = parse_spec({"objective": {"metric": "val_loss"}, "search": {"num_samples": 4}})
>>> spec.objective.direction, spec.search.num_samples, spec.training.epochs
('min', 4, 50)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automl.devices import PRECISIONS
from automl.errors import SpecError
from automl.hparams import ModelConfig, check_domain
from automl.objective import DEFAULT_METRIC, METRICS, MODES, Objective
from automl.space import SearchSpace
from automl.stages import SEEDS, TOP_K

TASKS = ("multiclass", "binary")
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are 32-bit
MAX_COUNT = 10**7
#: TPE's default start-up trials: max(TPE_STARTUP_MIN, configurations // TPE_STARTUP_DIVISOR), the configurations
#: being num_samples, or fewer when an epoch budget lets the search see fewer (SearchSettings.expected_configurations).
TPE_STARTUP_MIN, TPE_STARTUP_DIVISOR = 5, 5
TPE_STARTUP_SCALING = (f"max({TPE_STARTUP_MIN}, configurations // {TPE_STARTUP_DIVISOR}), configurations being "
                       "num_samples or what --epoch-budget allows, if fewer")
#: ASHA's epochs per configuration over what its rungs alone would spend (1/reduction_factor going on at each): it
#: promotes generously while few results set its cut-offs. Measured on the 40-trial Optuna + ASHA searches of
#: ham10000_cnn at grace period 2: 6.8 (results/ham10000_cnn_40) and 5.5 (results/reference-official-split) epochs
#: per configuration against 4.7 by the rungs.
ASHA_PROMOTION_SURPLUS = 1.3


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


def _fractions(value: Any, where: str) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise SpecError(f"{where}: expected three numbers [train, val, test], got {value!r}")
    numbers = tuple(check_domain(v, float, f"{where}[{i}]") for i, v in enumerate(value))
    if abs(sum(numbers) - 1.0) > 1e-6 or min(numbers) <= 0:
        raise SpecError(f"{where}: must be positive and sum to 1, got {list(value)!r}")
    return numbers


def _path(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: expected a file path, got {value!r}")
    return Path(value)


def _names(value: Any, where: str) -> tuple[str, ...]:
    """One name or path, or a list of them, as a tuple (empty: none)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) and v.strip() for v in items):
        raise SpecError(f"{where}: expected a list of run folders, got {value!r}")
    return tuple(items)


def _file_or_none(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: expected a file path or none, got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One spec setting: where it lives in the file, its domain, default, help and command-line flag.

    ``parse`` replaces the plain type check for values with a form of their own (image sizes,
    fractions, paths). ``group`` says which commands offer ``flag``: ``data`` and ``objective``
    (every command that trains), ``train`` (``automl train``), ``search`` (search, run, submit) or
    ``device`` (how training uses its device: train, search, run, submit).
    ``nargs`` ``"+"`` makes the flag take one value or more (a list setting).
    """

    key: str
    type: type
    default: Any
    help: str
    flag: str | None = None
    group: str | None = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    optional: bool = False
    parse: Callable[[Any, str], Any] | None = None
    field: str | None = None  # the dataclass field, when it differs from the key's last part
    nargs: str | None = None

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def attribute(self) -> str:
        return self.field or self.key.rpartition(".")[2]

    @property
    def dest(self) -> str:
        """The argparse destination of its flag."""
        return self.key.replace(".", "__")

    def check(self, value: Any, where: str) -> Any:
        if value is None:
            if self.optional:
                return None
            raise SpecError(f"{where}: a value is required")
        if self.parse is not None:
            return self.parse(value, where)
        return check_domain(value, self.type, where, self.choices, self.low, self.high)


#: Every setting of a spec, by its dotted key.
SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in [
        Setting("name", str, None, "free text, used in reports (default: the file's name)", optional=True),
        Setting("description", str, "", "free text"),
        Setting("data.task", str, "multiclass", "multiclass (7 dx classes) or binary (malignant = mel, bcc, akiec)",
                choices=TASKS),
        Setting("data.image_size", tuple, (28, 28), "S or HEIGHTxWIDTH: the size every image is resized to",
                flag="--image-size", group="data", parse=parse_image_size),
        Setting("data.split.method", str, "grouped", "grouped (by lesion, stratified by dx) or file",
                choices=("grouped", "file")),
        Setting("data.split.fractions", tuple, (0.70, 0.15, 0.15), "train/val/test fractions", parse=_fractions),
        Setting("data.split.seed", int, 0, "seed of the grouped split", low=0, high=MAX_SEED),
        Setting("data.split.file", Path, None, "CSV of image_id,split (e.g. dermamnist_split.csv) instead of the "
                "grouped split", flag="--split-file", group="data", optional=True, parse=_path),
        Setting("objective.metric", str, DEFAULT_METRIC, "the validation metric every stage optimises",
                flag="--metric", group="objective", choices=METRICS),
        Setting("objective.mode", str, None, "min or max (default: min for val_loss, max otherwise)",
                flag="--mode", group="objective", choices=MODES, optional=True),
        Setting("training.epochs", int, 50, "maximum epochs of automl train and of each retrained member (early "
                "stopping may end one sooner)",
                flag="--epochs", group="train", low=1, high=100_000),
        Setting("training.early_stopping_patience", int, 10, "epochs without improvement before stopping; 0 = off",
                low=0, high=100_000),
        Setting("training.reduce_lr_patience", int, 0, "epochs without improvement before the lr is cut; 0 = off",
                low=0, high=100_000),
        Setting("training.reduce_lr_factor", float, 0.5, "factor the lr is cut by", low=0.01, high=0.99),
        Setting("training.seed", int, 0, "training seed (retrained members: this, this + 1, ... per seed)",
                flag="--seed", group="train", low=0, high=MAX_SEED),
        Setting("training.precision", str, "auto", "float32, mixed_float16 or mixed_bfloat16 (Keras dtype policies: "
                "the output stays float32, mixed_float16 scales the loss), or auto: mixed_float16 on CUDA GPUs of "
                "compute capability 7.0 or more, float32 elsewhere; exports are float32 whatever trained them",
                flag="--precision", group="device", choices=PRECISIONS),
        Setting("training.max_parameters", int, None, "a candidate with more parameters is not trained (a search "
                "records it as errored, so that one draw cannot eat the search)", low=1, high=10**12, optional=True),
        Setting("search.engine", str, "ray", "ray or keras-tuner", flag="--engine", group="search",
                choices=("ray", "keras-tuner")),
        Setting("search.searcher", str, "optuna", "random or optuna (TPE)", flag="--searcher", group="search",
                choices=("random", "optuna")),
        Setting("search.scheduler", str, "asha", "asha or none", flag="--scheduler", group="search",
                choices=("asha", "none")),
        Setting("search.keras_tuner", str, "hyperband", "engine keras-tuner: hyperband, bayesian or random",
                flag="--keras-tuner", group="search", choices=("hyperband", "bayesian", "random")),
        Setting("search.num_samples", int, 20, "trials to run", flag="--num-samples", group="search",
                low=1, high=MAX_COUNT),
        Setting("search.image_size", tuple, None, "S or HEIGHTxWIDTH the search trains its candidates at, when "
                "smaller than data.image_size: retrain, ensemble and export then work at data.image_size (search "
                "cheap, ship sharp; default: data.image_size)", flag="--search-image-size", group="search",
                optional=True, parse=parse_image_size),
        Setting("search.max_epochs", int, 20, "epochs of a trial that is never stopped early", flag="--max-epochs",
                group="search", low=1, high=100_000),
        Setting("search.grace_period", int, 2, "ASHA: epochs every trial gets", flag="--grace-period",
                group="search", low=1, high=100_000),
        Setting("search.reduction_factor", int, 3, "ASHA: 1/this of the trials go on at each rung",
                flag="--reduction-factor", group="search", low=2, high=1000),
        Setting("search.max_concurrent", int, None, "trials at once (default: as many as the Ray cluster's GPUs, "
                "or CPUs when a trial takes no GPU, hold at the trial's request, counted as the search starts)",
                flag="--max-concurrent", group="search", low=1, high=100_000, optional=True),
        Setting("search.resources.cpu", float, 1.0, "CPUs per trial", flag="--cpus-per-trial", group="search",
                low=0.0, high=4096.0),
        Setting("search.resources.gpu", float, 0.0, "GPUs per trial (may be fractional)", flag="--gpus-per-trial",
                group="search", low=0.0, high=1024.0),
        Setting("search.time_budget_s", float, None, "stop starting trials after this many seconds",
                flag="--time-budget", group="search", low=1.0, high=1e9, optional=True),
        Setting("search.epoch_budget", int, None, "end the search once its trials have trained this many epochs in "
                "all (every epoch counts one, whatever the model: the same compute for every method)",
                flag="--epoch-budget", group="search", low=1, high=10**9, optional=True),
        Setting("search.tpe_startup_trials", int, None, "optuna, and keras-tuner bayesian: random trials before "
                "TPE (or KerasTuner's Gaussian process) models the results "
                f"(default: {TPE_STARTUP_SCALING})", flag="--tpe-startup-trials",
                group="search", low=0, high=MAX_COUNT, optional=True),
        Setting("search.tpe_sampling", str, "multivariate", "optuna: independent (one density per hyperparameter), "
                "multivariate (joint densities over the hyperparameters every trial has) or grouped (joint "
                "densities per group of hyperparameters that occur together: for conditional spaces)",
                flag="--tpe-sampling", group="search", choices=("independent", "multivariate", "grouped")),
        Setting("search.tpe_constant_liar", bool, True, "optuna: TPE counts running trials as bad results, so that "
                "concurrent trials are not drawn near each other", flag="--tpe-constant-liar", group="search"),
        Setting("search.snapshot_period_s", float, None, "seconds between Tune's experiment snapshots, what --resume "
                "restores (default: Tune's auto, 10 s or 19 times what the last one took, at most a twentieth of "
                "the driver's time); longer costs the driver less in searches of thousands of short trials, and loses "
                "more on a crash: trials started since the last snapshot are sampled again (finished ones are kept), "
                "running ones restart from the checkpoint it names", flag="--snapshot-period", group="search",
                low=1.0, high=1e6, optional=True),
        Setting("search.max_failures", int, 2, "a failing trial is retried from its last checkpoint this often",
                flag="--max-failures", group="search", low=0, high=1000),
        Setting("search.seed", int, 0, "the searcher's seed (its draws; training.seed seeds the training)",
                flag="--search-seed", group="search", low=0, high=MAX_SEED),
        Setting("search.warm_start", tuple, (), "earlier runs (folders, or names in --results) whose best "
                "configurations the search starts from; told to Optuna with their results, without training, when "
                "data, split, task, image size, space, objective, max_epochs and epoch definition agree",
                flag="--warm-start", group="search", parse=_names, nargs="+"),
        Setting("search.portfolio", str, "none", "optuna: a YAML file of configurations to train first (relative to "
                "the spec's folder, or the working directory), or none", flag="--portfolio", group="search",
                parse=_file_or_none),
        Setting("retrain.top_k", int, TOP_K, "configurations of the search retrained from scratch as the ensemble's "
                "candidate members (automl run, automl retrain)", flag="--top-k", group="retrain", low=1, high=10_000),
        Setting("retrain.seeds", int, SEEDS, "times each of those configurations is retrained, with training seeds "
                "training.seed, training.seed + 1, ...: members = top_k x seeds", flag="--seeds", group="retrain",
                low=1, high=1000),
    ]
}
#: Keys of specs written before the objective had its own section: read as the objective.
LEGACY_OBJECTIVE_KEYS = {"training.metric": "objective.metric", "search.metric": "objective.metric",
                         "search.mode": "objective.mode"}
_SECTIONS = {s.section for s in SETTINGS.values()} | {"", "hyperparameters"}


def _default(key: str) -> Any:
    return SETTINGS[key].default


def search_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`SearchSettings` field names to setting keys (``cpu`` -> ``search.resources.cpu``), for
    code that overrides search settings by name (benchmarks, tests): ``spec.with_overrides(search_overrides(...))``."""
    keys = {s.attribute: s.key for s in SETTINGS.values() if s.section in ("search", "search.resources")}
    return {keys[name]: value for name, value in values.items()}


def settings_with_flags(*groups: str) -> list[Setting]:
    """The settings a command offers as flags, in declaration order."""
    return [s for s in SETTINGS.values() if s.flag and s.group in groups]


@dataclass(frozen=True)
class SplitSpec:
    method: str = _default("data.split.method")
    fractions: tuple[float, float, float] = _default("data.split.fractions")
    seed: int = _default("data.split.seed")
    file: Path | None = _default("data.split.file")


@dataclass(frozen=True)
class DataSpec:
    task: str = _default("data.task")
    image_size: tuple[int, int] = _default("data.image_size")
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
    epochs: int = _default("training.epochs")
    early_stopping_patience: int = _default("training.early_stopping_patience")
    reduce_lr_patience: int = _default("training.reduce_lr_patience")
    reduce_lr_factor: float = _default("training.reduce_lr_factor")
    seed: int = _default("training.seed")
    max_parameters: int | None = _default("training.max_parameters")
    precision: str = _default("training.precision")


@dataclass(frozen=True)
class RetrainSettings:
    top_k: int = _default("retrain.top_k")
    seeds: int = _default("retrain.seeds")


@dataclass(frozen=True)
class SearchSettings:
    engine: str = _default("search.engine")
    searcher: str = _default("search.searcher")
    scheduler: str = _default("search.scheduler")
    keras_tuner: str = _default("search.keras_tuner")
    num_samples: int = _default("search.num_samples")
    image_size: tuple[int, int] | None = _default("search.image_size")
    max_epochs: int = _default("search.max_epochs")
    grace_period: int = _default("search.grace_period")
    reduction_factor: int = _default("search.reduction_factor")
    max_concurrent: int | None = _default("search.max_concurrent")
    cpu: float = _default("search.resources.cpu")
    gpu: float = _default("search.resources.gpu")
    time_budget_s: float | None = _default("search.time_budget_s")
    epoch_budget: int | None = _default("search.epoch_budget")
    tpe_startup_trials: int | None = _default("search.tpe_startup_trials")
    tpe_sampling: str = _default("search.tpe_sampling")
    tpe_constant_liar: bool = _default("search.tpe_constant_liar")
    snapshot_period_s: float | None = _default("search.snapshot_period_s")
    max_failures: int = _default("search.max_failures")
    seed: int = _default("search.seed")
    warm_start: tuple[str, ...] = _default("search.warm_start")
    portfolio: str = _default("search.portfolio")

    def tpe_startup(self) -> int:
        """TPE's random start-up trials: ``tpe_startup_trials``, or scaled to the configurations the search will
        see (:data:`TPE_STARTUP_SCALING`; benchmarks/tpe_settings.py measured it)."""
        if self.tpe_startup_trials is not None:
            return self.tpe_startup_trials
        return max(TPE_STARTUP_MIN, self.expected_configurations() // TPE_STARTUP_DIVISOR)

    def asha_rungs(self) -> list[int]:
        """The epochs at which ASHA decides, as Ray's ASHAScheduler places them (one bracket)."""
        g, rf, max_t = self.grace_period, self.reduction_factor, self.max_epochs
        count = int(math.log(max_t / g) / math.log(rf) + 1) if g <= max_t else 0
        return [g * rf**k for k in range(count)]

    def expected_epochs_per_configuration(self) -> float:
        """About how many epochs the search spends per configuration: every trial's ``max_epochs`` without a
        scheduler; with Ray's ASHA, what its rungs spend if 1/reduction_factor went on at each, times
        :data:`ASHA_PROMOTION_SURPLUS`."""
        if self.engine != "ray" or self.scheduler != "asha":
            return float(self.max_epochs)
        spent, going_on, reached = 0.0, 1.0, 0
        for rung in self.asha_rungs():
            rung = min(rung, self.max_epochs)
            spent += going_on * (rung - reached)
            going_on, reached = going_on / self.reduction_factor, rung
        return (spent + going_on * (self.max_epochs - reached)) * ASHA_PROMOTION_SURPLUS

    def budget_spent(self, epochs_trained: int) -> bool:
        """Whether a search that has trained ``epochs_trained`` epochs in all has used up its ``epoch_budget``."""
        return self.epoch_budget is not None and epochs_trained >= self.epoch_budget

    def expected_configurations(self) -> int:
        """The configurations the search will see: ``num_samples``, or fewer when ``epoch_budget`` ends it first."""
        if self.epoch_budget is None:
            return self.num_samples
        return min(self.num_samples, max(1, int(self.epoch_budget / self.expected_epochs_per_configuration())))


#: Where each section's settings land.
_HOLDERS = {"data": "data", "data.split": "data.split", "training": "training", "search": "search",
            "search.resources": "search", "objective": "objective", "retrain": "retrain", "": ""}


@dataclass(frozen=True)
class Spec:
    name: str
    data: DataSpec
    training: TrainingSpec
    hyperparameters: Mapping[str, Any]
    search: SearchSettings = field(default_factory=SearchSettings)
    description: str = ""
    source: Path | None = None
    objective: Objective = field(default_factory=Objective)
    space: SearchSpace = field(default=None, compare=False, repr=False)  # parsed once, in parse_spec
    retrain: RetrainSettings = field(default_factory=RetrainSettings)

    @property
    def search_image_size(self) -> tuple[int, int]:
        """The size the search trains its candidates at: ``search.image_size``, or else ``data.image_size``, at
        which every later stage (retrain, ensemble, export) works."""
        return tuple(self.search.image_size or self.data.image_size)

    def search_dataset_args(self) -> dict[str, Any]:
        """:meth:`DataSpec.dataset_args` at :attr:`search_image_size`: the data a search trains its candidates on."""
        return self.data.dataset_args() | {"image_size": self.search_image_size}

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

    def value(self, key: str) -> Any:
        """The value of setting ``key`` in this spec."""
        setting = SETTINGS[key]
        if key in ("name", "description"):
            return getattr(self, key)
        if setting.section == "objective":
            return {"metric": self.objective.name, "mode": self.objective.direction}[setting.attribute]
        holder = self
        for part in _HOLDERS[setting.section].split("."):
            holder = getattr(holder, part)
        return getattr(holder, setting.attribute)

    def to_raw(self) -> dict[str, Any]:
        """The resolved spec as plain data that :func:`parse_spec` reads back to an equal spec."""
        raw: dict[str, Any] = {}
        for key in SETTINGS:
            value = self.value(key)
            if value is None:
                continue
            _put(raw, key, _plain(value))
        raw["hyperparameters"] = dict(self.hyperparameters)
        return raw

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_raw(), sort_keys=False)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Spec:
        """A copy with command-line values (setting key -> value; ``None`` = not given), validated like the file."""
        given = {key: value for key, value in overrides.items() if value is not None}
        if not given:
            return self
        raw = self.to_raw()
        for key, value in given.items():
            _put(raw, key, SETTINGS[key].check(value, SETTINGS[key].flag or key))
        if "objective.metric" in given and "objective.mode" not in given:
            raw["objective"].pop("mode", None)  # a new metric takes its own direction
        if "data.split.file" in given:
            raw["data"]["split"]["method"] = "file"
        return parse_spec(_plain(raw), source=self.source, where="command line" if self.source is None else None)


#: The folder inside the package that holds the shipped specs (package data, so a wheel install has them).
SHIPPED_SPECS = "search_spaces"


def shipped_specs_dir() -> Path:
    """The folder of the specs shipped with automl (``automl/search_spaces``, wherever the package is installed)."""
    from importlib.resources import files

    return Path(str(files("automl").joinpath(SHIPPED_SPECS)))


def shipped_spec_names() -> list[str]:
    """The names a spec can be given by instead of a path (``quick``, ``ham10000_cnn``, ...), sorted."""
    return sorted(path.stem for path in shipped_specs_dir().glob("*.yaml"))


def find_spec(spec: str | Path) -> Path:
    """The spec file a command's SPEC argument names: a path to a YAML file, else the name of a shipped spec
    (``quick`` or ``quick.yaml``), from any folder. A :class:`SpecError` listing the shipped names when neither exists.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", ".yaml"):
        shipped = shipped_specs_dir() / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    raise SpecError(f"{spec}: no such spec file, and not a shipped spec (shipped: {', '.join(shipped_spec_names())})")


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file, given by its path or by a shipped spec's name (:func:`find_spec`)."""
    path = find_spec(path)
    raw = read_yaml(path, "spec")
    return parse_spec(raw if raw is not None else {}, source=path)


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's data (safe loading; a key given twice is an error); a :class:`SpecError` naming the file and
    the line when it is not YAML or cannot be read. ``what`` says what the file is."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the {what}: {exc}") from None


def parse_spec(raw: Any, source: Path | None = None, where: str | None = None) -> Spec:
    """Validate an already-loaded spec mapping."""
    where = where or (str(source) if source else "spec")
    values = _read_settings(raw, where)
    if values["data.split.method"] == "file" and values["data.split.file"] is None:
        raise SpecError(f"{where}: data.split: method 'file' needs file: PATH (a CSV of image_id,split)")
    if values["data.split.file"] is not None:
        values["data.split.method"] = "file"
    small, large = values["search.image_size"], values["data.image_size"]
    if small is not None and (small[0] > large[0] or small[1] > large[1]):
        raise SpecError(f"{where}: search.image_size {small[0]}x{small[1]} is larger than data.image_size "
                        f"{large[0]}x{large[1]}; the search trains at the smaller size, retrain and export at the "
                        "larger")
    if values["search.grace_period"] > values["search.max_epochs"]:
        raise SpecError(f"{where}: search: grace_period ({values['search.grace_period']}) exceeds max_epochs "
                        f"({values['search.max_epochs']})")
    hyperparameters = {str(k): v for k, v in (raw.get("hyperparameters") or {}).items()}
    space = SearchSpace.parse(hyperparameters, where=f"{where}: hyperparameters")  # every entry validated here

    def section(*prefixes: str) -> dict[str, Any]:
        return {s.attribute: values[s.key] for s in SETTINGS.values() if s.section in prefixes}

    return Spec(
        name=values["name"] or (source.stem if source else "spec"),
        data=DataSpec(task=values["data.task"], image_size=values["data.image_size"],
                      split=SplitSpec(**section("data.split"))),
        training=TrainingSpec(**section("training")),
        hyperparameters=hyperparameters,
        search=SearchSettings(**section("search", "search.resources")),
        description=values["description"],
        source=source,
        objective=Objective.of(values["objective.metric"], values["objective.mode"], where=f"{where}: objective"),
        space=space,
        retrain=RetrainSettings(**section("retrain")),
    )


def _read_settings(raw: Any, where: str) -> dict[str, Any]:
    """Every setting's checked value (or its default), from a nested mapping; unknown keys are errors."""
    given = _flatten(raw, "", where)
    for key in ("objective.metric", "objective.mode"):
        spellings = {k: given.pop(k) for k in (key, *[k for k, v in LEGACY_OBJECTIVE_KEYS.items() if v == key])
                     if k in given}
        if len(set(map(str, spellings.values()))) > 1:
            said = " and ".join(f"{k} ({v})" for k, v in spellings.items())
            raise SpecError(f"{where}: {said} disagree; a spec has one objective: set {key} only")
        if spellings:
            given[key] = next(iter(spellings.values()))
    values = {}
    for key, setting in SETTINGS.items():
        at = f"{where}: {key}"
        values[key] = setting.check(given[key], at) if key in given else setting.default
    return values


def _flatten(raw: Any, prefix: str, where: str) -> dict[str, Any]:
    at = f"{where}: {prefix}" if prefix else where
    if not isinstance(raw, Mapping):
        raise SpecError(f"{at}: expected a mapping of keys, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if key == "hyperparameters":
            if value is not None and not isinstance(value, Mapping):
                raise SpecError(f"{where}: hyperparameters: expected a mapping of keys, got {type(value).__name__}")
        elif key in _SECTIONS:
            flat |= _flatten({} if value is None else value, key, where)
        elif key in SETTINGS or key in LEGACY_OBJECTIVE_KEYS:
            flat[key] = value
        else:
            known = sorted(k.rpartition(".")[2] for k in [*SETTINGS, *_SECTIONS, *LEGACY_OBJECTIVE_KEYS]
                           if k and k.rpartition(".")[0] == prefix)
            raise SpecError(f"{at}: unknown key {str(name)!r} (known here: {', '.join(known)})")
    return {k: v for k, v in flat.items() if v is not None}  # an empty value means the default


def _put(raw: dict, key: str, value: Any) -> None:
    *sections, last = key.split(".")
    for part in sections:
        raw = raw.setdefault(part, {})
    raw[last] = value


def _plain(value: Any) -> Any:
    """Tuples and paths as YAML would give them, so that overrides parse like the file."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not a silent overwrite."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)
