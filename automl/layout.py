"""Every path inside a run folder and a model folder, and the readers for them: the one owner.

A run folder ``RESULTS/NAME/`` (what each file holds: :mod:`automl.store`, :mod:`automl.retrain`,
:mod:`automl.ensemble`)::

    spec.yaml  run.json  trials.parquet  epochs.parquet  optuna.db  .lock
    trials-parts/  epochs-parts/                  rows appended while a search runs (:class:`PartedTable`)
    ray/  keras_tuner/                            the engines' own state (resume)
    retrain/members.parquet  retrain/labels.npz  retrain/members/mNN/{model.keras, val_probs.npy, ...}
    refit/members.parquet  refit/members/mNN/{model.keras, test_probs.npy, ...}   the members again, on train+val
    ensemble/{ensemble.json, metrics.json, report.md, confusion_matrix.png, roc.png}
    model/                                        the exported model folder (:class:`ModelLayout`)
    model/evaluations/NAME/{metrics.json, report.md, roc.png, reliability.png, predictions.csv}
                                                  automl evaluate on a labelled folder (:class:`EvaluationLayout`)

Column names of the tables: ``hp_NAME`` per hyperparameter, ``best_METRIC`` at a trial's best
epoch, ``last_METRIC`` at its last, and what a trial cost (:data:`COST_COLUMNS`). No heavy
imports here (pandas and numpy load on first read), so the command line can use it before
TensorFlow loads. A file that is missing or damaged is one :class:`RunFolderError` line naming
it, never a traceback::

    >>> run = RunLayout("results/reference")
    >>> run.trials.as_posix(), run.member("m01").as_posix()
    ('results/reference/trials.parquet', 'results/reference/retrain/members/m01')
    >>> hp_column("learning_rate"), best_column("val_auc")
    ('hp_learning_rate', 'best_val_auc')
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl.errors import UserError

HP_PREFIX, BEST_PREFIX, LAST_PREFIX = "hp_", "best_", "last_"
#: What a trial cost, in trials.parquet: its model's parameter count, the median seconds of its epochs, the seconds
#: since it started (at its last epoch) and the training samples it has trained on (when the engine reports them).
#: And the size of the images it trained on (``HxW``): pixels cost as much as parameters.
PARAMETERS, SECONDS_PER_EPOCH = "parameters", "seconds_per_epoch"
WALL_TIME, SAMPLES_SEEN, IMAGE_SIZE = "wall_time_s", "samples_seen", "image_size"
COST_COLUMNS = (IMAGE_SIZE, PARAMETERS, SECONDS_PER_EPOCH, WALL_TIME, SAMPLES_SEEN)
#: Per epoch, in epochs.parquet (when the engine reports it): the seconds the epoch took; ``samples_seen`` as above.
EPOCH_SECONDS = "epoch_s"


def size_text(size) -> str:
    """An image size (height, width) as a table shows it: ``HxW``."""
    return "x".join(str(int(n)) for n in size)


def member_image_size(info: dict) -> tuple[int, int]:
    """The size a run's retrained members take (``run.json``'s ``retrain.image_size``): the spec's ``data.image_size``,
    which a search may have undercut with ``search.image_size``; the search's own size for runs retrained before the
    retrain recorded it (they were the same)."""
    return tuple((info.get("retrain") or {}).get("image_size") or info["image_size"])


class RunFolderError(UserError):
    """A file a command needs is missing from a run or model folder, or cannot be read."""


def hp_column(name: str) -> str:
    return f"{HP_PREFIX}{name}"


def best_column(metric: str) -> str:
    return f"{BEST_PREFIX}{metric}"


def last_column(metric: str) -> str:
    return f"{LAST_PREFIX}{metric}"


#: The model family of a trial (``cnn``, ``resnet``, ``backbone``): absent from runs of spaces without ``family``.
FAMILY_COLUMN = hp_column("family")


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
    #: ``automl evaluate``'s default output: one folder per labelled data set the model was measured on.
    evaluations = property(lambda self: self.root / "evaluations")

    def read_card(self) -> dict:
        return _read(self.card_json, json_object, "an exported model folder needs it; re-export with automl export")

    def evaluation(self, name: str) -> EvaluationLayout:
        return EvaluationLayout(self.evaluations / name)

    def evaluation_names(self) -> list[str]:
        """The evaluations present, by name (sorted; hidden staging folders left out)."""
        try:
            return sorted(p.name for p in self.evaluations.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []


@dataclass(frozen=True)
class EvaluationLayout:
    """One ``automl evaluate`` output folder (``MODEL_DIR/evaluations/NAME/`` unless ``--out`` chose another)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    metrics = property(lambda self: self.root / "metrics.json")
    report = property(lambda self: self.root / "report.md")
    roc_png = property(lambda self: self.root / "roc.png")
    reliability_png = property(lambda self: self.root / "reliability.png")
    predictions = property(lambda self: self.root / "predictions.csv")

    def read_metrics(self) -> dict:
        return _read(self.metrics, json_object, f"run automl evaluate again to rewrite {self.root}")


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
    #: Batches of rows a running search appended since the last compaction into the two files above.
    trial_parts = property(lambda self: self.root / "trials-parts")
    epoch_parts = property(lambda self: self.root / "epochs-parts")
    trial_table = property(lambda self: PartedTable(self.trials, self.trial_parts, ("trial_id",), _arrange_trials))
    epoch_table = property(lambda self: PartedTable(self.epochs, self.epoch_parts, ("trial_id", "epoch"),
                                                    _arrange_epochs))
    lock = property(lambda self: self.root / ".lock")
    optuna_db = property(lambda self: self.root / "optuna.db")
    #: Folder names of the engines' own state, below the run folder (or the shared storage).
    ray_dir_name, keras_tuner_dir_name = "ray", "keras_tuner"

    @staticmethod
    def members_experiment(stage: str) -> str:
        """The folder name of the Tune experiment that trains a stage's members (``retrain`` or ``refit``), in the run
        folder (or below shared storage) until they have all finished."""
        return f"ray-{stage}"

    retrain = property(lambda self: self.root / "retrain")
    members = property(lambda self: self.retrain / "members.parquet")
    #: ``automl retrain --refit``: the ensemble's members trained again on train+val, same layout as ``retrain/``.
    refit = property(lambda self: self.root / "refit")
    refit_members = property(lambda self: self.refit / "members.parquet")
    labels = property(lambda self: self.retrain / "labels.npz")
    ensemble = property(lambda self: self.root / "ensemble")
    ensemble_json = property(lambda self: self.ensemble / "ensemble.json")
    ensemble_metrics = property(lambda self: self.ensemble / "metrics.json")
    report = property(lambda self: self.ensemble / "report.md")
    confusion_png = property(lambda self: self.ensemble / "confusion_matrix.png")
    roc_png = property(lambda self: self.ensemble / "roc.png")
    model = property(lambda self: ModelLayout(self.root / "model"))

    def member(self, member_id: str, refit: bool = False) -> Path:
        """A retrained (or refit) member's folder: ``model.keras``, ``val_probs.npy``, ``test_probs.npy``, ..."""
        return (self.refit if refit else self.retrain) / "members" / member_id

    # Inside a member's folder (written by the member's trial, wherever it ran, then copied here).
    @staticmethod
    def member_probs(member_dir: Path, split: str, tta: str = "none") -> Path:
        """Probabilities on a split, plain (``val_probs.npy``) or averaged over TTA views (``val_probs_flips.npy``)."""
        return Path(member_dir) / (f"{split}_probs.npy" if tta == "none" else f"{split}_probs_{tta}.npy")

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
        return (self.info_file, self.trials, self.trial_parts, self.epochs, self.epoch_parts, self.members,
                self.ensemble_json, self.ensemble_metrics,
                self.model.card_json, self.model.evaluations)

    def is_run(self) -> bool:
        return self.info_file.is_file() or self.trial_table.exists()

    # Readers. Each names the file and what to do when it is missing or damaged.
    def read_info(self, required: bool = False) -> dict:
        """``run.json`` as a dict; ``{}`` when absent unless ``required``."""
        if not required and not self.info_file.is_file():
            return {}
        return _read(self.info_file, json_object, "not a search run folder; check --results and the name")

    def read_trials(self):
        """Every trial, one row each (the latest state of a running search), in the order trials started."""
        return _read_table(self.trial_table, "run automl search first, or check --results and the name")

    def read_epochs(self):
        """Every trial's every epoch, by trial and epoch."""
        return _read_table(self.epoch_table, "run automl search first, or check --results and the name")

    def epochs_trained(self) -> int:
        """Every epoch the run's trials trained, each counted once: a row of ``epochs.parquet`` each (an epoch a
        retried trial repeats is one row; a KerasTuner Hyperband trial that goes on from another's model has rows
        for its own epochs only). What ``epoch_budget`` counts, and run.json's ``epochs_spent``."""
        return len(self.read_epochs()) if self.epoch_table.exists() else 0

    def read_members(self, refit: bool = False):
        import pandas as pd

        if refit:
            return _read(self.refit_members, pd.read_parquet, f"run automl retrain {self.name} --refit first")
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

    def read_member_probs(self, member_id: str, split: str, tta: str = "none", refit: bool = False):
        import numpy as np

        return _read(self.member_probs(self.member(member_id, refit), split, tta), np.load,
                     f"run automl retrain {self.name}{' --refit' if refit else ''} again")


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


# Tables written in parts: the results store's trials and epochs.

#: In a compacted table file's metadata: the last part it holds (parts up to it are stale copies).
PARTS_THROUGH = b"automl.parts_through"
PART_SUFFIX = ".parquet"
#: Attempts of a reader whose parts a writer keeps merging away under it.
READ_ATTEMPTS = 20


@dataclass(frozen=True)
class Part:
    """One batch of rows, holding flushes ``first`` to ``last`` of its table (one flush, or several merged)."""

    first: int
    last: int
    path: Path

    @property
    def span(self) -> int:
        return self.last - self.first + 1


class DamagedFile(Exception):
    """A part or table file that exists but cannot be read."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class PartedTable:
    """A table kept as one compacted Parquet file plus a folder of parts appended since (each a batch of rows).

    Every part is named by the range of flushes it holds (``FIRST-LAST.parquet``) and written atomically.
    Merging parts writes the merged part before deleting its sources; compacting writes the base file, with the
    last part it holds in its metadata (:data:`PARTS_THROUGH`), before deleting the parts. So a reader lists the
    parts, then reads the base, skips the parts it or a wider part already holds, and lists again if a part
    vanished meanwhile: it never sees a row twice or misses one. A later row replaces an earlier one with the same
    ``key``. The writer is :class:`automl.store.RunStore`.
    """

    base: Path
    folder: Path
    key: tuple[str, ...]
    arrange: Callable[[Any], Any] | None = field(default=None, compare=False)  # pyarrow table -> ordered table

    def part_path(self, first: int, last: int) -> Path:
        return self.folder / f"{first:010d}-{last:010d}{PART_SUFFIX}"

    def parts(self) -> list[Part]:
        """Every part file, oldest flushes first (wider parts before the ones they hold, left by a crash)."""
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            first, _, last = name.removesuffix(PART_SUFFIX).partition("-")
            if name.endswith(PART_SUFFIX) and first.isdigit() and last.isdigit():
                found.append(Part(int(first), int(last), self.folder / name))
        return sorted(found, key=lambda p: (p.last, -p.span))

    def exists(self) -> bool:
        return self.base.is_file() or bool(self.parts())

    def through(self) -> int:
        """The last part the base file holds; -1 without a base file (or one written before parts existed)."""
        if not self.base.is_file():
            return -1
        import pyarrow.parquet as pq

        try:
            return _through(pq.read_schema(self.base))
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a torn or foreign file
            raise DamagedFile(self.base, _reason(exc)) from None

    @staticmethod
    def live(parts: list[Part], through: int) -> list[Part]:
        """The parts still to read: newer than the base and not held by a wider part."""
        newer = [p for p in parts if p.last > through]
        return [p for p in newer
                if not any(q is not p and q.first <= p.first and p.last <= q.last and q.span > p.span for q in newer)]

    def read_table(self):
        """Base and parts as one pyarrow table, the latest row of each key, arranged; ``None`` if there is nothing."""
        for _ in range(READ_ATTEMPTS):
            parts = self.parts()  # before the base: a compaction that removes them has written the base first
            try:
                tables, through = [], -1
                if self.base.is_file():  # replaced atomically, never removed
                    tables.append(read_parquet(self.base))
                    through = _through(tables[0].schema)
                tables += [read_parquet(p.path) for p in self.live(parts, through)]
            except FileNotFoundError:
                continue  # merged or compacted away meanwhile: list again
            if not tables:
                return None
            table = latest(concat_tables(tables), self.key) if len(tables) > 1 else tables[0]
            return self.arrange(table) if self.arrange else table
        raise DamagedFile(self.folder, f"its parts kept changing over {READ_ATTEMPTS} attempts to read them")

    def read(self):
        """The whole table as a pandas DataFrame (empty when nothing was written)."""
        import pandas as pd

        table = self.read_table()
        return pd.DataFrame() if table is None else table.to_pandas()

    def stamp(self) -> tuple:
        """Changes whenever the table does: for caches of what was read."""
        return tuple(_stat(p) for p in (self.base, self.folder))


def read_parquet(path: Path):
    """A Parquet file as a pyarrow table; :class:`DamagedFile` when unreadable (``FileNotFoundError`` passes)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a torn or foreign file
        if not Path(path).exists():
            raise FileNotFoundError(path) from None
        raise DamagedFile(Path(path), _reason(exc)) from None


def concat_tables(tables: list):
    """One table of several, columns united (a column absent from a batch is null there, ints widen to floats)."""
    import pyarrow as pa

    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")


def latest(table, key: tuple[str, ...]):
    """The last row of each ``key``, at the position of its first row."""
    import numpy as np

    keys = table.select(list(key)).to_pandas()
    keep = ~keys.duplicated(list(key), keep="last").to_numpy()
    if keep.all():
        return table
    group = keys.groupby(list(key), sort=False).ngroup().to_numpy()
    rows = np.flatnonzero(keep)
    return table.take(rows[np.argsort(group[rows], kind="stable")])


def order_trial_columns(columns: list[str]) -> list[str]:
    """``trial_id, status, epochs, best_epoch``, then the ``hp_*`` columns sorted, then the rest as they came."""
    first = [c for c in ("trial_id", "status", "epochs", "best_epoch") if c in columns]
    hps = sorted(c for c in columns if c.startswith(HP_PREFIX))
    return first + hps + [c for c in columns if c not in first and c not in hps]


def _arrange_trials(table):
    return table.select(order_trial_columns(table.column_names))


def _arrange_epochs(table):
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])


def _read_table(table: PartedTable, what_to_do: str):
    if not table.exists():
        raise RunFolderError(f"{table.base}: missing; {what_to_do}")
    try:
        return table.read()
    except DamagedFile as exc:
        raise RunFolderError(f"{exc.path}: damaged or half-written ({exc.reason}); {what_to_do}") from None


def _through(schema) -> int:
    return int((schema.metadata or {}).get(PARTS_THROUGH, b"-1"))


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
