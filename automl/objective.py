"""The objective: the validation metric a run optimises and its direction, owned once.

A spec has one objective (``objective: {metric, mode}``). The search (Ray Tune, Optuna, ASHA,
KerasTuner), the retrain's early stopping and learning-rate schedule, the ensemble's greedy
selection, the choice of the best member, the reports and the dashboard all receive this object
and ask it what "better" means; none of them spells a metric name or a direction of its own.

>>> objective = Objective.of("val_loss")
>>> objective.direction, objective.key
('min', 'loss')
>>> objective.better(0.3, 0.5), objective.best_index([0.5, float("nan"), 0.2, 0.4])
(True, 2)
>>> Objective.of("val_auc").best([0.7, 0.9, 0.8])
0.9
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from automl.errors import SpecError

#: The headline scores, in the order tables show them (all to maximise).
HEADLINE = ("balanced_accuracy", "macro_f1", "accuracy", "auc")
#: Every metric the product computes per split, with the direction that is better.
DIRECTIONS: dict[str, str] = {**dict.fromkeys(HEADLINE, "max"), "loss": "min"}
#: The names an objective can take: the validation metrics reported after every epoch.
METRICS = tuple(f"val_{name}" for name in DIRECTIONS)
DEFAULT_METRIC = "val_balanced_accuracy"  # mean recall, ISIC 2018's ranking metric
MODES = ("min", "max")
#: The fixed specificities ``automl evaluate`` reads sensitivity at.
SPECIFICITIES = (0.8, 0.9)


def sensitivity_at(specificity: float) -> str:
    """The name of the sensitivity at a fixed specificity, e.g. ``sensitivity_at_spec_0.8``."""
    return f"sensitivity_at_spec_{specificity:g}"


#: What ``automl evaluate`` adds on an external set, with the direction that is better: ROC-AUC of a yes/no question,
#: sensitivity at fixed specificities, expected calibration error and Brier score. Measured there, never objectives.
EXTERNAL_DIRECTIONS: dict[str, str] = {"auc": "max", **{sensitivity_at(s): "max" for s in SPECIFICITIES},
                                       "ece": "min", "brier": "min"}


@dataclass(frozen=True)
class Objective:
    """A metric name from :data:`METRICS` and its direction, ``"min"`` or ``"max"``."""

    name: str = DEFAULT_METRIC
    direction: str = "max"

    @classmethod
    def of(cls, name: str = DEFAULT_METRIC, direction: str | None = None, where: str = "objective") -> Objective:
        """Validate ``name`` and ``direction`` (default: the metric's natural direction)."""
        if name not in METRICS:
            raise SpecError(f"{where}.metric: {name!r} is not one of {', '.join(METRICS)}")
        natural = DIRECTIONS[name.removeprefix("val_")]
        direction = direction or natural
        if direction not in MODES:
            raise SpecError(f"{where}.mode: {direction!r} is not one of {', '.join(MODES)}")
        return cls(name, direction)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Objective:
        """The objective a results record (``run.json``) was made with; runs predating it used the default."""
        return cls.of(record.get("metric") or DEFAULT_METRIC, record.get("mode"))

    def to_record(self) -> dict[str, str]:
        return {"metric": self.name, "mode": self.direction}

    @property
    def key(self) -> str:
        """The metric's name in a split's metrics (``val_auc`` -> ``auc``)."""
        return self.name.removeprefix("val_")

    @property
    def sign(self) -> int:
        """+1 when larger is better, -1 when smaller is."""
        return 1 if self.direction == "max" else -1

    @property
    def worst(self) -> float:
        """A finite value worse than any real one: what an infeasible candidate reports."""
        return -1.0 if self.direction == "max" else 1e9

    def better(self, a: float | None, b: float | None) -> bool:
        """``a`` strictly better than ``b``; a missing or NaN value is never better, and anything beats one."""
        if not _scored(a):
            return False
        return not _scored(b) or self.sign * a > self.sign * b

    def best_index(self, values: Sequence[float | None]) -> int | None:
        """Position of the best scored value (the first among ties), ``None`` if nothing is scored."""
        best = None
        for i, value in enumerate(values):
            if self.better(value, values[best] if best is not None else None):
                best = i
        return best

    def best(self, values: Iterable[float | None]) -> float:
        """The best scored value, NaN if there is none."""
        values = list(values)
        index = self.best_index(values)
        return math.nan if index is None else float(values[index])

    def sort(self, frame, column: str):
        """A pandas frame ordered best first by ``column``; unscored rows last, ties in their order."""
        return frame.sort_values(column, ascending=self.direction == "min", na_position="last", kind="stable")

    def running_best(self, values):
        """Best so far along a pandas Series (NaN until the first scored value)."""
        return values.cummax() if self.direction == "max" else values.cummin()

    def score(self, y_true, probs) -> float:
        """This metric of predicted class probabilities (N, K) (what ensemble selection compares)."""
        from automl.metrics import metric_value

        return metric_value(self.key, y_true, probs, probs.shape[1])

    def __str__(self) -> str:
        return f"{self.name} ({self.direction})"


def _scored(value: float | None) -> bool:
    try:
        return value is not None and not math.isnan(value)
    except TypeError:
        return False
