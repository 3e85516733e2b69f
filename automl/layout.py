"""Every path inside a run folder and a model folder, and the readers for them: the one owner.

A run folder ``RESULTS/NAME/`` (what each file holds: :mod:`automl.store`, :mod:`automl.retrain`,
:mod:`automl.evaluate`)::

    spec.yaml  run.json  trials.parquet  epochs.parquet  optuna.db  .lock
    ray/  keras_tuner/                            the engines' own state (resume)
    retrain/members.parquet  retrain/labels.npz  retrain/members/mNN/{model.keras, val_probs.npy, ...}
    ensemble/{ensemble.json, metrics.json, report.md, confusion_matrix.png, roc.png}
    model/                                        the exported model folder (:class:`ModelLayout`)

Column names of the tables: ``hp_NAME`` per hyperparameter, ``best_METRIC`` at a trial's best
epoch, ``last_METRIC`` at its last. No heavy imports here (pandas and numpy load on first read),
so the command line can use it before TensorFlow loads. A file that is missing or damaged is one
:class:`RunFolderError` line naming it, never a traceback::

    >>> run = RunLayout("results/reference")
    >>> run.trials.as_posix(), run.member("m01").as_posix()
    ('results/reference/trials.parquet', 'results/reference/retrain/members/m01')
    >>> hp_column("learning_rate"), best_column("val_auc")
    ('hp_learning_rate', 'best_val_auc')
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.errors import UserError

HP_PREFIX, BEST_PREFIX, LAST_PREFIX = "hp_", "best_", "last_"


class RunFolderError(UserError):
    """A file a command needs is missing from a run or model folder, or cannot be read."""


def hp_column(name: str) -> str:
    return f"{HP_PREFIX}{name}"


def best_column(metric: str) -> str:
    return f"{BEST_PREFIX}{metric}"


def last_column(metric: str) -> str:
    return f"{LAST_PREFIX}{metric}"


def hyperparameter_columns(frame) -> list[str]:
    return [c for c in frame.columns if c.startswith(HP_PREFIX)]


def hyperparameter_name(column: str) -> str:
    return column.removeprefix(HP_PREFIX)


@dataclass(frozen=True)
class ModelLayout:
    """An exported model folder: ``model.keras``, ``saved_model/``, the model card, external evaluations."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    keras_file = property(lambda self: self.root / "model.keras")
    saved_model = property(lambda self: self.root / "saved_model")
    card_json = property(lambda self: self.root / "model_card.json")
    card_md = property(lambda self: self.root / "model_card.md")

    def read_card(self) -> dict:
        return _read(self.card_json, json_object, "an exported model folder needs it; re-export with automl export")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder, and readers that turn a missing or damaged file into one clear line."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def name(self) -> str:
        return self.root.name

    spec = property(lambda self: self.root / "spec.yaml")
    info_file = property(lambda self: self.root / "run.json")
    trials = property(lambda self: self.root / "trials.parquet")
    epochs = property(lambda self: self.root / "epochs.parquet")
    lock = property(lambda self: self.root / ".lock")
    optuna_db = property(lambda self: self.root / "optuna.db")
    #: Folder names of the engines' own state, below the run folder (or the shared storage).
    ray_dir_name, keras_tuner_dir_name = "ray", "keras_tuner"
    retrain = property(lambda self: self.root / "retrain")
    members = property(lambda self: self.retrain / "members.parquet")
    labels = property(lambda self: self.retrain / "labels.npz")
    ensemble = property(lambda self: self.root / "ensemble")
    ensemble_json = property(lambda self: self.ensemble / "ensemble.json")
    ensemble_metrics = property(lambda self: self.ensemble / "metrics.json")
    report = property(lambda self: self.ensemble / "report.md")
    confusion_png = property(lambda self: self.ensemble / "confusion_matrix.png")
    roc_png = property(lambda self: self.ensemble / "roc.png")
    model = property(lambda self: ModelLayout(self.root / "model"))

    def member(self, member_id: str) -> Path:
        """A retrained member's folder: ``model.keras``, ``val_probs.npy``, ``test_probs.npy``, ``history.csv``."""
        return self.retrain / "members" / member_id

    # Inside a member's folder (written by the member's trial, wherever it ran, then copied here).
    @staticmethod
    def member_probs(member_dir: Path, split: str) -> Path:
        return Path(member_dir) / f"{split}_probs.npy"

    @staticmethod
    def member_model(member_dir: Path) -> Path:
        return Path(member_dir) / "model.keras"

    @staticmethod
    def member_history(member_dir: Path) -> Path:
        return Path(member_dir) / "history.csv"

    @staticmethod
    def member_record(member_dir: Path) -> Path:
        return Path(member_dir) / "member.json"

    @property
    def watched(self) -> tuple[Path, ...]:
        """What a live view re-reads when it changes."""
        return (self.info_file, self.trials, self.epochs, self.members, self.ensemble_json, self.ensemble_metrics,
                self.model.card_json)

    def is_run(self) -> bool:
        return self.info_file.is_file() or self.trials.is_file()

    # Readers. Each names the file and what to do when it is missing or damaged.
    def read_info(self, required: bool = False) -> dict:
        """``run.json`` as a dict; ``{}`` when absent unless ``required``."""
        if not required and not self.info_file.is_file():
            return {}
        return _read(self.info_file, json_object, "not a search run folder; check --results and the name")

    def read_trials(self):
        import pandas as pd

        return _read(self.trials, pd.read_parquet, "run automl search first, or check --results and the name")

    def read_epochs(self):
        import pandas as pd

        return _read(self.epochs, pd.read_parquet, "run automl search first, or check --results and the name")

    def read_members(self):
        import pandas as pd

        return _read(self.members, pd.read_parquet, f"run automl retrain {self.name} first")

    def read_labels(self) -> dict:
        import numpy as np

        def load(path: Path) -> dict:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}

        return _read(self.labels, load, f"run automl retrain {self.name} first")

    def read_ensemble(self) -> dict:
        return _read(self.ensemble_json, json_object, f"run automl ensemble {self.name} first")

    def read_ensemble_metrics(self) -> dict:
        return _read(self.ensemble_metrics, json_object, f"run automl ensemble {self.name} first")

    def read_member_probs(self, member_id: str, split: str):
        import numpy as np

        return _read(self.member_probs(self.member(member_id), split), np.load,
                     f"run automl retrain {self.name} again")


def json_object(path: Path) -> dict:
    """A JSON file that must hold an object."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _read(path: Path, reader: Callable[[Path], Any], what_to_do: str) -> Any:
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {what_to_do}")
    try:
        return reader(path)
    except Exception as exc:  # noqa: BLE001 - parquet, JSON, npz and Keras each raise their own types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RunFolderError(f"{path}: damaged or half-written ({reason}); {what_to_do}") from None
