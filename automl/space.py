"""One declarative search space, translated for each engine under the same names and conditions.

A spec's ``hyperparameters`` section maps names to fixed values or to dimensions::

    conv_blocks: {choice: [2, 3, 4]}
    base_filters: {int: [16, 64], step: 16}
    learning_rate: {float: [1.0e-4, 1.0e-2], log: true}
    block_dropout_4: {float: [0.0, 0.5], when: "conv_blocks >= 4"}

``when`` makes a dimension exist only when another one satisfies a comparison (``==``, ``!=``,
``<``, ``<=``, ``>``, ``>=``, or ``in [a, b]``). The same :class:`SearchSpace` becomes a Ray Tune
``param_space`` (random search), an Optuna define-by-run function (TPE sees the conditions) or
KerasTuner ``HyperParameters`` (conditions as parent values)::

    >>> space = SearchSpace.parse({"conv_blocks": {"choice": [2, 4]},
    ...                            "block_dropout_4": {"float": [0.0, 0.5], "when": "conv_blocks >= 4"}})
    >>> space.active({"conv_blocks": 2, "block_dropout_4": 0.3})
    {'conv_blocks': 2}
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from automl.errors import SpecError
from automl.hparams import ModelConfig, check_value

_OPERATORS = {"==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge,
              "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(==|!=|<=|>=|<|>|in)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    """``parent OP value``: the dimension exists only when this holds for the sampled parent."""

    parent: str
    op: str
    value: Any

    def holds(self, config: Mapping[str, Any]) -> bool:
        if self.parent not in config or config[self.parent] is None:
            return False
        actual = config[self.parent]
        if self.op == "in":
            return actual in self.value
        return _OPERATORS[self.op](actual, self.value)

    def __str__(self) -> str:
        return f"{self.parent} {self.op} {self.value}"


@dataclass(frozen=True)
class Dimension:
    """One searched (or fixed) hyperparameter.

    ``kind`` is ``fixed``, ``choice``, ``int`` or ``float``; ``low``/``high`` bound ranges, ``step``
    quantises them, ``log`` samples on a log scale.
    """

    name: str
    kind: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    condition: Condition | None = None

    def value_of(self, value: Any) -> Any:
        """``value`` as this dimension's own value (a choice's as listed, an int range's as an int); a
        :class:`SpecError` when it is outside the dimension's domain."""
        value = _plain(value)
        if self.kind in ("fixed", "choice"):
            for own in self.values:
                if own == value and isinstance(own, bool) == isinstance(value, bool):
                    return own
            shown = self.values[0] if self.kind == "fixed" else list(self.values)
            raise SpecError(f"{self.name}: {value!r} is not {'one of ' if self.kind == 'choice' else ''}{shown}")
        numeric = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or not self.low <= value <= self.high:
            raise SpecError(f"{self.name}: {value!r} is outside [{self.low}, {self.high}]")
        if self.kind == "int" and value != int(value):
            raise SpecError(f"{self.name}: {value!r} is not an integer")
        if self.step and not math.isclose((value - self.low) / self.step, round((value - self.low) / self.step),
                                          abs_tol=1e-6):
            raise SpecError(f"{self.name}: {value!r} is not on the grid of step {self.step} from {self.low}")
        return int(value) if self.kind == "int" else float(value)

    def grid(self) -> list:
        """Every value of a finite dimension (choices, fixed value, or an int range)."""
        if self.kind in ("fixed", "choice"):
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ValueError(f"{self.name} is a continuous range")


class SearchSpace:
    """Dimensions in spec order; parents come before the dimensions that depend on them."""

    def __init__(self, dimensions: list[Dimension]):
        self.dimensions = dimensions
        self.by_name = {d.name: d for d in dimensions}

    @classmethod
    def parse(cls, hyperparameters: Mapping[str, Any], where: str = "hyperparameters") -> SearchSpace:
        dims = [_parse_dimension(str(name), value, f"{where}.{name}") for name, value in hyperparameters.items()]
        names = [d.name for d in dims]
        for i, dim in enumerate(dims):
            if dim.condition is None:
                continue
            parent = dim.condition.parent
            at = f"{where}.{dim.name}.when"
            if parent not in names:
                raise SpecError(f"{at}: refers to {parent!r}, which is not a hyperparameter of this space")
            if names.index(parent) > i:
                raise SpecError(f"{at}: list {parent!r} before {dim.name!r} (conditions refer to earlier entries)")
            if dims[names.index(parent)].kind == "float":
                raise SpecError(f"{at}: the parent {parent!r} must be a choice, an int range or fixed")
            if dims[names.index(parent)].condition is not None:
                raise SpecError(f"{at}: the parent {parent!r} is itself conditional; nest one level only")
        return cls(dims)

    @property
    def searched(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.kind != "fixed"]

    def active(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config without dimensions whose condition does not hold (or that were not sampled)."""
        out = {}
        for dim in self.dimensions:
            if dim.condition is not None and not dim.condition.holds(out):
                continue
            if dim.name in config and config[dim.name] is not None:
                value = _plain(config[dim.name])
                if dim.kind in ("choice", "fixed") and value in dim.values:
                    # The dimension's own value: KerasTuner hands back a choice of True/False as 1/0.
                    value = dim.values[list(dim.values).index(value)]
                out[dim.name] = value
        return out

    def configuration(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (a trial's hyperparameters as another run recorded them, or a portfolio's) as a candidate of
        this space: every dimension whose condition holds present and inside its domain, nothing else given.

        A :class:`SpecError` says why it is not one (a hyperparameter missing, outside its domain, or not in this
        space): the same values would otherwise train another model than the one they describe.

        >>> space = SearchSpace.parse({"conv_blocks": {"choice": [2, 4]}, "dense_units": 64,
        ...                            "block_dropout_4": {"float": [0.0, 0.5], "when": "conv_blocks >= 4"}})
        >>> space.configuration({"conv_blocks": 2.0, "dense_units": 64, "block_dropout_4": None})
        {'conv_blocks': 2, 'dense_units': 64}
        >>> space.configuration({"conv_blocks": 3, "dense_units": 64})
        Traceback (most recent call last):
        ...
        automl.errors.SpecError: conv_blocks: 3 is not one of [2, 4]
        """
        given = {name: value for name, value in values.items()
                 if value is not None and not (isinstance(value, float) and math.isnan(value))}
        out: dict[str, Any] = {}
        for dim in self.dimensions:
            if dim.condition is not None and not dim.condition.holds(out):
                continue
            if dim.name not in given:
                raise SpecError(f"{dim.name}: missing")
            out[dim.name] = dim.value_of(given[dim.name])
        for name in given:
            if name not in out:
                why = "its condition does not hold" if name in self.by_name else "not a hyperparameter of this space"
                raise SpecError(f"{name}: given, but {why}")
        return out

    def infeasible(self, config: Mapping[str, Any], image_size: tuple[int, int]) -> SpecError | None:
        """Why the candidate a draw describes cannot run on ``image_size`` images, or None when it can.

        Pure Python, no model built: searchers check every draw on the driver and redraw instead of spending a
        trial on one that cannot run. The error is an :class:`~automl.errors.InfeasibleError` (too many
        poolings, 'valid' padding, a backbone too large for its input) whose ``kind`` names the rule, or another
        :class:`SpecError` for a combination the hyperparameters do not allow. ``training.max_parameters`` is
        left to the trial: counting parameters without building the model would need a second copy of the
        builder's arithmetic for every family (keras.applications backbones included), which would drift from the
        builder; a candidate over the limit costs a trial one model build, and no epoch.
        """
        try:
            ModelConfig.from_params(self.active(config)).check_image_size(*image_size)
        except SpecError as exc:
            return exc
        return None

    # --- engines ---------------------------------------------------------------------------------

    def ray_param_space(self) -> dict[str, Any]:
        """Ray Tune domains for every dimension; inactive ones are sampled and then dropped by :meth:`active`."""
        from ray import tune

        space = {}
        for d in self.dimensions:
            if d.kind == "fixed":
                space[d.name] = d.values[0]
            elif d.kind == "choice":
                space[d.name] = tune.choice(list(d.values))
            elif d.kind == "int":
                # Tune's randint upper bound is exclusive; qrandint's is inclusive.
                if d.log:
                    space[d.name] = (tune.qlograndint(int(d.low), int(d.high), int(d.step or 1)) if d.step
                                     else tune.lograndint(int(d.low), int(d.high) + 1))
                else:
                    space[d.name] = tune.qrandint(int(d.low), int(d.high), int(d.step or 1))
            elif d.log:
                space[d.name] = tune.qloguniform(d.low, d.high, d.step) if d.step else tune.loguniform(d.low, d.high)
            else:
                space[d.name] = tune.quniform(d.low, d.high, d.step) if d.step else tune.uniform(d.low, d.high)
        return space

    def optuna_define_by_run(self) -> OptunaDefineByRun:
        """A callable for Ray's ``OptunaSearch(space=...)`` that samples only the active dimensions."""
        return OptunaDefineByRun(self)

    def keras_tuner_hyperparameters(self):
        """KerasTuner ``HyperParameters`` with the same names; conditions become parent values."""
        import keras_tuner as kt

        hp = kt.HyperParameters()
        for d in self.dimensions:
            parent = {}
            if d.condition is not None:
                grid = self.by_name[d.condition.parent].grid()
                parent = {
                    "parent_name": d.condition.parent,
                    "parent_values": [v for v in grid if d.condition.holds({d.condition.parent: v})],
                }
            if d.kind == "fixed":
                hp.Fixed(d.name, d.values[0], **parent)
            elif d.kind == "choice":
                hp.Choice(d.name, list(d.values), ordered=False, **parent)
            elif d.kind == "int":
                hp.Int(d.name, int(d.low), int(d.high), step=int(d.step or 1),
                       sampling="log" if d.log else "linear", **parent)
            else:
                hp.Float(d.name, d.low, d.high, step=d.step, sampling="log" if d.log else "linear", **parent)
        return hp


class OptunaDefineByRun:
    """Optuna define-by-run sampling of a space. A class, not a closure: Tune pickles its searcher."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for d in self.space.dimensions:
            if d.condition is not None and not d.condition.holds(sampled | constants):
                continue
            if d.kind == "fixed":
                constants[d.name] = d.values[0]
            elif d.kind == "choice":
                sampled[d.name] = trial.suggest_categorical(d.name, list(d.values))
            elif d.kind == "int":
                sampled[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
            else:
                sampled[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
        return constants  # Ray merges these with the values it captured from suggest_*


def _parse_dimension(name: str, value: Any, where: str) -> Dimension:
    if not isinstance(value, Mapping):
        return Dimension(name, "fixed", values=(_plain(check_value(name, value, where)),))
    entry = dict(value)
    condition = _parse_condition(entry.pop("when"), f"{where}.when") if "when" in entry else None
    kinds = [k for k in ("choice", "int", "float", "fixed") if k in entry]
    if len(kinds) != 1:
        raise SpecError(f"{where}: give exactly one of choice: [...], int: [low, high], float: [low, high], "
                        "fixed: VALUE")
    kind = kinds[0]
    body = entry.pop(kind)
    step, log = entry.pop("step", None), entry.pop("log", False)
    if entry:
        raise SpecError(f"{where}: unknown key {next(iter(entry))!r} (known: {kind}, step, log, when)")
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log: expected true or false, got {log!r}")
    if kind == "fixed":
        return Dimension(name, "fixed", values=(_plain(check_value(name, body, where)),), condition=condition)
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise SpecError(f"{where}.choice: expected a non-empty list, got {body!r}")
        values = tuple(_plain(check_value(name, v, f"{where}.choice[{i}]")) for i, v in enumerate(body))
        return Dimension(name, "choice", values=values, condition=condition)
    if not isinstance(body, list) or len(body) != 2:
        raise SpecError(f"{where}.{kind}: expected [low, high], got {body!r}")
    low, high = (check_value(name, v, f"{where}.{kind}") for v in body)
    if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
        raise SpecError(f"{where}.int: bounds must be integers, got {body!r}")
    if not low < high:
        raise SpecError(f"{where}.{kind}: low must be below high, got {body!r}")
    if log and low <= 0:
        raise SpecError(f"{where}: a log range needs a positive low bound, got {low}")
    if step is not None and (not isinstance(step, int | float) or isinstance(step, bool) or step <= 0):
        raise SpecError(f"{where}.step: expected a positive number, got {step!r}")
    if kind == "int" and step is not None and not isinstance(step, int):
        raise SpecError(f"{where}.step: an int range needs an integer step, got {step!r}")
    return Dimension(name, kind, low=low, high=high, step=step, log=log, condition=condition)


def _parse_condition(text: Any, where: str) -> Condition:
    import yaml

    match = _CONDITION.match(text) if isinstance(text, str) else None
    if not match:
        raise SpecError(f"{where}: expected 'NAME OP VALUE' (OP one of ==, !=, <, <=, >, >=, in), got {text!r}")
    parent, op, raw = match.groups()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise SpecError(f"{where}: cannot read the value {raw!r}") from None
    if op == "in" and not isinstance(value, list):
        raise SpecError(f"{where}: 'in' needs a list, e.g. {parent} in [3, 4]")
    return Condition(parent, op, value)


def _plain(value: Any) -> Any:
    """numpy scalars (what Tune samples) to Python ones, floats rounded to drop sampling noise."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
