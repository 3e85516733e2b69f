"""The results store read into plain summaries for the pages.

Every read failure (a missing, half-written or corrupt file) becomes a message on the summary;
nothing here raises to a page. Reads are cached by (path, mtime, size) (a table's by its file and
its parts folder), so a refresh re-reads only what a running search changed. Cached frames are
shared between requests: never modify them.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from automl.errors import UserError
from automl.layout import DamagedFile, PartedTable, RunLayout, best_column, json_object
from automl.objective import Objective

_cache: dict[str, tuple[Any, Any]] = {}


def cached(key: str, stamp: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, reused while ``stamp`` is unchanged (one slot per key, so memory stays bounded)."""
    hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = compute()
    _cache[key] = (stamp, value)
    return value


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _read(path: Path, reader: Callable[[Path], Any], messages: list[str]) -> Any:
    """The file as ``reader`` returns it; ``None`` when missing, or unreadable (then said in ``messages``)."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        return cached(str(path), stamp, lambda: reader(path))
    except Exception as exc:  # noqa: BLE001 - a torn or corrupt file of any format: the page says so instead of failing
        messages.append(f"{path.name} could not be read (half-written or corrupt?): {type(exc).__name__}: {exc}")
        return None


def _read_table(table: PartedTable, messages: list[str], *columns: str) -> pd.DataFrame | None:
    """A table of the store (base file and parts) with ``columns``; ``None`` when absent or unreadable (said)."""
    stamp = table.stamp()
    if stamp == (None, None):
        return None
    try:
        return cached(str(table.base), stamp, lambda: _checked(table.read(), *columns))
    except Exception as exc:  # noqa: BLE001 - a torn or corrupt file of any format: the page says so instead of failing
        name = exc.path.name if isinstance(exc, DamagedFile) else table.base.name
        messages.append(f"{name} could not be read (half-written or corrupt?): {type(exc).__name__}: {exc}")
        return None


def _checked(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame]
    if missing and not frame.empty:  # an empty frame is a store that has not recorded anything yet
        raise ValueError(f"no column {', '.join(missing)}")
    return frame


@dataclass
class Run:
    """One search run: its run.json, trials and epochs, and what could not be read."""

    name: str
    path: Path
    info: dict
    trials: pd.DataFrame
    epochs: pd.DataFrame
    messages: list[str] = field(default_factory=list)
    log_scaled: frozenset[str] = frozenset()  # hyperparameters the spec samples on a log scale

    def __post_init__(self):
        self.layout = RunLayout(self.path)
        try:
            self.objective = Objective.from_record(self.info)
        except UserError as exc:
            self.messages.append(f"run.json names no known objective ({exc}); ranking by the default")
            self.objective = Objective()
        self.metric = self.objective.name
        self.status = self.info.get("status") or "unknown"
        self.score_column = best_column(self.metric)

    @property
    def version(self) -> tuple:
        """Changes whenever the run's trials or epochs change on disk."""
        return self.layout.trial_table.stamp() + self.layout.epoch_table.stamp()

    def counts(self) -> dict[str, int]:
        """Trials by status."""
        return self.trials["status"].value_counts().to_dict() if "status" in self.trials else {}

    def best(self) -> float:
        """The best value of the run's metric over all trials (NaN before any epoch)."""
        if self.score_column not in self.trials:
            return math.nan
        return self.objective.best(self.trials[self.score_column])

    def started(self) -> dt.datetime | None:
        return _parse_time(self.info.get("started"))

    def duration_s(self) -> float | None:
        """Wall time: recorded for a finished run, up to now for a running one, up to the last write otherwise."""
        if self.info.get("wall_s"):
            return float(self.info["wall_s"])
        start = self.started()
        if start is None:
            return None
        end = _parse_time(self.info.get("ended"))
        if end is None and self.status == "running":
            return time.time() - start.timestamp()
        if end is None:
            stamps = [s for s in self.version if s]
            return max(s[0] for s in stamps) / 1e9 - start.timestamp() if stamps else None
        return (end - start).total_seconds()

    def has_models(self) -> bool:
        return self.layout.ensemble_metrics.is_file() or self.layout.members.is_file()


@dataclass
class Models:
    """What retrain, ensemble and export left: each part ``None`` when absent or unreadable."""

    members: pd.DataFrame | None
    ensemble: dict | None
    metrics: dict | None
    model_dir: Path | None
    messages: list[str] = field(default_factory=list)


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def run_names(results_dir: Path) -> list[str]:
    """Folders under ``results_dir`` that hold a search run, newest first (hidden staging folders left out)."""
    try:
        folders = [p for p in Path(results_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    runs = [p for p in folders if RunLayout(p).is_run()]
    return [p.name for p in sorted(runs, key=lambda p: (_stamp(RunLayout(p).info_file) or (0,))[0], reverse=True)]


def run_path(results_dir: Path, name: str) -> Path | None:
    """The folder of run ``name``, or ``None``: only names that exist as runs, so no path can escape."""
    return Path(results_dir) / name if name in run_names(results_dir) else None


def load_run(results_dir: Path, name: str, epochs: bool = True) -> Run | None:
    """Run ``name`` with every readable part, or ``None`` if there is no such run; ``epochs=False``: trials only."""
    path = run_path(results_dir, name)
    if path is None:
        return None
    run = RunLayout(path)
    messages = [] if run.info_file.is_file() else [f"no {run.info_file.name} yet"]
    info = _read(run.info_file, json_object, messages)
    trials = _read_table(run.trial_table, messages, "trial_id", "status")
    epochs = _read_table(run.epoch_table, messages, "trial_id", "epoch") if epochs else None
    log_scaled = _read(run.spec, _log_scaled, messages)
    return Run(name, path, info or {}, pd.DataFrame() if trials is None else trials,
               pd.DataFrame() if epochs is None else epochs, messages, log_scaled or frozenset())


def _log_scaled(path: Path) -> frozenset[str]:
    hyperparameters = (yaml.safe_load(path.read_text()) or {}).get("hyperparameters") or {}
    return frozenset(name for name, value in hyperparameters.items() if isinstance(value, dict) and value.get("log"))


def load_models(run: Run) -> Models:
    """The run's retrained members, ensemble summary and test metrics, and its exported model folder."""
    messages: list[str] = []
    members = _read(run.layout.members, pd.read_parquet, messages)
    ensemble = _read(run.layout.ensemble_json, json_object, messages)
    metrics = _read(run.layout.ensemble_metrics, json_object, messages)
    model_dir = run.layout.model.root
    return Models(members, ensemble, metrics, model_dir if model_dir.is_dir() else None, messages)


def load_evaluations(run: Run) -> tuple[list[tuple[str, dict]], list[str]]:
    """The exported model's external evaluations (``automl evaluate``) by name, and what could not be read."""
    messages: list[str] = []
    model = run.layout.model
    found = [(name, _read(model.evaluation(name).metrics, json_object, messages)) for name in model.evaluation_names()]
    return [(name, metrics) for name, metrics in found if metrics is not None], messages


def model_card(run_dir: Path) -> Path | None:
    """The exported model's card (Markdown), if the run has been exported."""
    path = RunLayout(run_dir).model.card_md
    return path if path.is_file() else None


def signature(results_dir: Path, name: str | None = None) -> str:
    """A fingerprint of the watched files of one run (or of every run): it changes when a page would."""
    names = [name] if name else run_names(results_dir)
    parts = [f"{path}:{_stamp(path)}" for n in names for path in RunLayout(Path(results_dir) / n).watched]
    return "|".join(parts)
