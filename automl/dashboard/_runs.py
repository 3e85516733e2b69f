"""The results store read into plain summaries for the pages.

Every read failure (a missing, half-written or corrupt file) becomes a message on the summary;
nothing here raises to a page. Reads are cached by (path, mtime, size), so a refresh re-reads only
the files a running search rewrote. Cached frames are shared between requests: never modify them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from automl.store import EPOCHS_FILE, RUN_FILE, SPEC_FILE, TRIALS_FILE, read_epochs, read_trials

MEMBERS_FILE = Path("retrain") / "members.parquet"
ENSEMBLE_FILE = Path("ensemble") / "ensemble.json"
METRICS_FILE = Path("ensemble") / "metrics.json"
MODEL_DIR = "model"
# What a refresh looks at: a change in any of these re-renders the page showing the run.
WATCHED = (RUN_FILE, TRIALS_FILE, EPOCHS_FILE, MEMBERS_FILE, ENSEMBLE_FILE, METRICS_FILE,
           Path(MODEL_DIR) / "model_card.json")

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
        self.metric = self.info.get("metric") or "val_balanced_accuracy"
        self.mode = self.info.get("mode") or "max"
        self.status = self.info.get("status") or "unknown"
        self.score_column = f"best_{self.metric}"

    @property
    def version(self) -> tuple:
        """Changes whenever the run's trials or epochs change on disk."""
        return _stamp(self.path / TRIALS_FILE), _stamp(self.path / EPOCHS_FILE)

    def counts(self) -> dict[str, int]:
        """Trials by status."""
        return self.trials["status"].value_counts().to_dict() if "status" in self.trials else {}

    def best(self) -> float:
        """The best value of the run's metric over all trials (NaN before any epoch)."""
        if self.score_column not in self.trials:
            return math.nan
        values = self.trials[self.score_column].dropna()
        if values.empty:
            return math.nan
        return float(values.max() if self.mode == "max" else values.min())

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
        return (self.path / METRICS_FILE).is_file() or (self.path / MEMBERS_FILE).is_file()


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
    runs = [p for p in folders if (p / RUN_FILE).is_file() or (p / TRIALS_FILE).is_file()]
    return [p.name for p in sorted(runs, key=lambda p: (_stamp(p / RUN_FILE) or (0,))[0], reverse=True)]


def run_path(results_dir: Path, name: str) -> Path | None:
    """The folder of run ``name``, or ``None``: only names that exist as runs, so no path can escape."""
    return Path(results_dir) / name if name in run_names(results_dir) else None


def load_run(results_dir: Path, name: str) -> Run | None:
    """Run ``name`` with every readable part, or ``None`` if there is no such run."""
    path = run_path(results_dir, name)
    if path is None:
        return None
    messages = [] if (path / RUN_FILE).is_file() else [f"no {RUN_FILE} yet"]
    info = _read(path / RUN_FILE, _json_object, messages)
    trials = _read(path / TRIALS_FILE, lambda p: _checked(read_trials(p.parent), "trial_id", "status"), messages)
    epochs = _read(path / EPOCHS_FILE, lambda p: _checked(read_epochs(p.parent), "trial_id", "epoch"), messages)
    log_scaled = _read(path / SPEC_FILE, _log_scaled, messages)
    return Run(name, path, info or {}, pd.DataFrame() if trials is None else trials,
               pd.DataFrame() if epochs is None else epochs, messages, log_scaled or frozenset())


def _log_scaled(path: Path) -> frozenset[str]:
    hyperparameters = (yaml.safe_load(path.read_text()) or {}).get("hyperparameters") or {}
    return frozenset(name for name, value in hyperparameters.items() if isinstance(value, dict) and value.get("log"))


def load_models(run: Run) -> Models:
    """The run's retrained members, ensemble summary and test metrics, and its exported model folder."""
    messages: list[str] = []
    members = _read(run.path / MEMBERS_FILE, pd.read_parquet, messages)
    ensemble = _read(run.path / ENSEMBLE_FILE, _json_object, messages)
    metrics = _read(run.path / METRICS_FILE, _json_object, messages)
    model_dir = run.path / MODEL_DIR
    return Models(members, ensemble, metrics, model_dir if model_dir.is_dir() else None, messages)


def _json_object(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return data


def model_card(run_dir: Path) -> Path | None:
    """The exported model's card, else the one the ensemble stage wrote."""
    for path in (run_dir / MODEL_DIR / "model_card.md", run_dir / "ensemble" / "model_card.md"):
        if path.is_file():
            return path
    return None


def signature(results_dir: Path, name: str | None = None) -> str:
    """A fingerprint of the watched files of one run (or of every run): it changes when a page would."""
    names = [name] if name else run_names(results_dir)
    parts = [f"{n}/{f}:{_stamp(Path(results_dir) / n / f)}" for n in names for f in WATCHED]
    return "|".join(parts)
