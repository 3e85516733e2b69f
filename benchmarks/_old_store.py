"""The results store as it was before the scale work (git HEAD 82646e1 automl/store.py), frozen.

Kept only so that benchmarks/scale.py can measure before and after on one machine in one run; nothing else may
import it. The product's store is automl/store.py. Unchanged except for this docstring, the class name and the
module's other functions (run.json and machine helpers, which it did not use), left out. It reads the files through
today's RunLayout, which reads the old format unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from automl.files import atomic_write
from automl.layout import RunLayout, best_column, hp_column, hyperparameter_columns, last_column
from automl.objective import METRICS, Objective

EPOCH_COLUMNS = ("loss", "accuracy", *METRICS, "learning_rate")
STATUSES = ("running", "completed", "pruned", "errored")
FINISHED = ("completed", "pruned", "errored")


class OldRunStore:
    """Collects trial and epoch records of one run and writes them out atomically.

    Existing files are loaded first, so a resumed run keeps every finished trial.
    """

    def __init__(self, run_dir: Path, objective: Objective, max_epochs: int, flush_every_s: float = 2.0):
        self.layout = RunLayout(run_dir)
        self.objective, self.max_epochs = objective, max_epochs
        self.flush_every_s = flush_every_s
        self.trials: dict[str, dict[str, Any]] = {}
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {}
        self._last_flush = 0.0
        if self.layout.trials.is_file():
            for row in self.layout.read_trials().to_dict("records"):
                self.trials[row["trial_id"]] = row
        if self.layout.epochs.is_file():
            for row in self.layout.read_epochs().to_dict("records"):
                self.epochs[row["trial_id"], int(row["epoch"])] = row

    def trial_started(self, trial_id: str, params: dict[str, Any]) -> None:
        row = self.trials.setdefault(
            trial_id, {"trial_id": trial_id, "epochs": 0, "wall_time_s": 0.0, "started_at": time.time()})
        row["status"] = "running"
        row.update({hp_column(k): v for k, v in params.items()})

    def epoch(self, trial_id: str, epoch: int, metrics: dict[str, Any], elapsed_s: float, info: dict[str, Any]) -> None:
        """Record one epoch's metrics (a retried trial overwrites the epochs it repeats)."""
        record = {"trial_id": trial_id, "epoch": int(epoch), "elapsed_s": float(elapsed_s), "timestamp": time.time()}
        record.update({k: _number(metrics.get(k)) for k in EPOCH_COLUMNS})
        if info.get("node_id"):
            record["node_id"] = info["node_id"]  # a trial retried after a lost node continues elsewhere
        self.epochs[trial_id, int(epoch)] = record
        row = self.trials.setdefault(trial_id, {"trial_id": trial_id, "status": "running"})
        row.update(info)
        row["epochs"] = max(int(epoch), int(row.get("epochs") or 0))
        row["wall_time_s"] = float(elapsed_s)
        self._summarise(trial_id)
        self.flush()

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        assert status in STATUSES, status
        row = self.trials.setdefault(trial_id, {"trial_id": trial_id, "epochs": 0})
        if status == "completed" and int(row.get("epochs") or 0) < self.max_epochs:
            status = "pruned"
        row["status"] = status
        row["error"] = error
        self.flush(force=True)

    def finished_count(self) -> int:
        return sum(1 for r in self.trials.values() if r.get("status") in FINISHED)

    def best_value(self) -> float:
        """The run's best value of its objective so far (NaN before any epoch)."""
        return self.objective.best(r.get(best_column(self.objective.name)) for r in self.trials.values())

    def flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_flush < self.flush_every_s:
            return
        self.layout.root.mkdir(parents=True, exist_ok=True)
        trials = pd.DataFrame(list(self.trials.values()))
        epochs = pd.DataFrame(list(self.epochs.values()))
        if not epochs.empty:
            epochs = epochs.sort_values(["trial_id", "epoch"], kind="stable")
        atomic_write(self.layout.trials, lambda f: _order(trials).to_parquet(f, index=False))
        atomic_write(self.layout.epochs, lambda f: epochs.to_parquet(f, index=False))
        self._last_flush = time.monotonic()

    def _summarise(self, trial_id: str) -> None:
        rows = [r for (t, _), r in sorted(self.epochs.items()) if t == trial_id]
        row = self.trials[trial_id]
        best = self.objective.best_index([r.get(self.objective.name) for r in rows])
        if best is not None:
            row["best_epoch"] = rows[best]["epoch"]
            row.update({best_column(m): rows[best].get(m) for m in METRICS})
        row.update({last_column(m): rows[-1].get(m) for m in METRICS})


def _order(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return trials
    first = ["trial_id", "status", "epochs", "best_epoch"]
    hps = sorted(hyperparameter_columns(trials))
    rest = [c for c in trials.columns if c not in first and c not in hps]
    return trials[[c for c in first if c in trials.columns] + hps + rest]


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
