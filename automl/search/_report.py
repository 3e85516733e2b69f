"""What a search prints: a line per finished trial (then, in a large search, a periodic summary), and the leaderboard
at the end."""

from __future__ import annotations

import math
import time

import pandas as pd

from automl import console
from automl.layout import (
    FAMILY_COLUMN, IMAGE_SIZE, PARAMETERS, SECONDS_PER_EPOCH, best_column, hp_column, hyperparameter_columns,
    hyperparameter_name,
)
from automl.objective import Objective
from automl.store import STATUSES, RunStore, missing

# Shown in progress lines when they are searched: the hyperparameters that matter most in the seeds.
KEY_HYPERPARAMETERS = ("family", "conv_blocks", "base_filters", "filters", "dense_units", "optimizer", "learning_rate",
                       "imbalance", "batch_size", "pool_type")
#: A line per finished trial for the first LINES_UP_TO; after that a summary every SUMMARY_EVERY_S seconds, plus the
#: line of each trial that sets a new best, so that a search of thousands of trials stays readable.
LINES_UP_TO, SUMMARY_EVERY_S = 200, 30.0


class Report:
    def __init__(self, objective: Objective, num_samples: int, searched: list[str], lines_up_to: int = LINES_UP_TO,
                 summary_every_s: float = SUMMARY_EVERY_S):
        self.objective, self.num_samples = objective, num_samples
        self.shown = [n for n in KEY_HYPERPARAMETERS if n in searched][:5] or searched[:5]
        self.lines_up_to, self.summary_every_s = lines_up_to, summary_every_s
        self._best_shown: float | None = None  # the best of the finished trials printed so far
        self._summary = (time.monotonic(), 0)  # when the last summary was printed, and the trials finished by then
        self._summarising = False

    def trial_line(self, store: RunStore, trial_id: str) -> None:
        """The line of a finished trial; beyond ``lines_up_to`` trials only for a new best, and the summary when due."""
        done = store.finished_count()
        if self._best_shown is None:  # a resumed search: its earlier trials count as shown
            self._best_shown = store.best_value() if done > 1 else math.nan
        value = store.trials[trial_id].get(best_column(self.objective.name))
        new_best = self.objective.better(value, self._best_shown)
        self._best_shown = value if new_best else self._best_shown
        if done <= self.lines_up_to or new_best:
            self._line(store, trial_id, " (new best)" if done > self.lines_up_to else "")
        if done > self.lines_up_to and not self._summarising:
            self._summarising = True
            console.info(f"more than {self.lines_up_to} trials finished: from now on a summary every "
                         f"{self.summary_every_s:.0f} s, and the line of each trial that sets a new best")
        self.tick(store)

    def tick(self, store: RunStore) -> None:
        """The summary line, when the search is past ``lines_up_to`` trials and ``summary_every_s`` has passed."""
        done, (last, done_then) = store.finished_count(), self._summary
        now = time.monotonic()
        if done <= self.lines_up_to or now - last < self.summary_every_s:
            return
        self._summary = (now, done)
        counts = dict.fromkeys(("completed", "pruned", "errored", "running"), 0)
        for row in store.trials.values():
            counts[row.get("status")] = counts.get(row.get("status"), 0) + 1
        console.info(
            f"[{done}/{self.num_samples}] " + ", ".join(f"{n} {s}" for s, n in counts.items() if s in STATUSES)
            + f"; {60 * (done - done_then) / (now - last):.0f} trials/min; best so far {_fmt(store.best_value())}")

    def _line(self, store: RunStore, trial_id: str, note: str = "") -> None:
        row = store.trials[trial_id]
        value = row.get(best_column(self.objective.name))
        params = ", ".join(f"{n}={_short(row.get(hp_column(n)))}"
                           for n in self.shown if row.get(hp_column(n)) is not None)
        status = row.get("status")
        what = (f"{status} after {int(row.get('epochs') or 0)} epochs" if status != "errored"
                else f"errored: {row.get('error')}")
        what = ", ".join([what, *_costs(row)])
        console.info(
            f"[{store.finished_count()}/{self.num_samples}] {trial_id} {what}  {self.objective.name} {_fmt(value)}  "
            f"best so far {_fmt(store.best_value())}{note}  ({params})"
        )

    def leaderboard(self, trials: pd.DataFrame, top: int = 10) -> None:
        from rich.table import Table

        column = best_column(self.objective.name)
        if trials.empty or column not in trials:
            console.out.print("no trial finished an epoch")
            return
        ranked = self.objective.sort(trials, column).head(top)
        # The family (when the space has one) and what each trial cost (runs recorded before have no cost columns)
        # get columns of their own.
        family = FAMILY_COLUMN in trials and bool(trials[FAMILY_COLUMN].notna().any())
        varying = [c for c in hyperparameter_columns(trials)
                   if trials[c].nunique(dropna=True) > 1 and not (family and c == FAMILY_COLUMN)]
        # Key hyperparameters first and at most 10 in all, so the table stays readable;
        # trials.parquet has every one.
        hps = sorted(varying, key=lambda c: (hyperparameter_name(c) not in KEY_HYPERPARAMETERS, c))[:10]
        second = best_column("val_macro_f1") if self.objective.name != "val_macro_f1" else best_column("val_auc")
        columns = [("trial", lambda r: r["trial_id"]), ("status", lambda r: str(r.get("status")))]  # (header, cell)
        if family:
            columns.append(("family", lambda r: _short(r.get(FAMILY_COLUMN))))
        columns.append(("epochs", lambda r: str(int(r.get("epochs") or 0))))
        if IMAGE_SIZE in trials:
            columns.append(("px", lambda r: str(r.get(IMAGE_SIZE) or "-")))
        if PARAMETERS in trials:
            columns.append(("params", lambda r: _count(r.get(PARAMETERS))))
        if SECONDS_PER_EPOCH in trials:
            columns.append(("s/epoch", lambda r: _seconds(r.get(SECONDS_PER_EPOCH))))
        columns += [(self.objective.key, lambda r: _fmt(r.get(column))),
                    (second.removeprefix("best_val_"), lambda r: _fmt(r.get(second))),
                    *[(hyperparameter_name(h), lambda r, h=h: _short(r.get(h))) for h in hps]]
        table = Table(title=f"leaderboard by {column} (top {len(ranked)} of {len(trials)} trials)")
        for name, _ in columns:
            table.add_column(name, justify="left" if name in ("trial", "status", "family") else "right")
        for row in ranked.to_dict("records"):
            table.add_row(*[cell(row) for _, cell in columns])
        console.out.print(table)

    def budget_lines(self, info: dict) -> None:
        """What the search spent: epochs (of the epoch budget), the draws rejected as infeasible without a trial, and
        what a warm start told the searcher without training."""
        budget = info.get("epoch_budget")
        spent = f"{info.get('epochs_spent', 0)} epochs trained" + (f" of a budget of {budget}" if budget else "")
        rejected = info.get("infeasible_draws") or {}
        reasons = ", ".join(f"{why} {n}" for why, n in (rejected.get("by_reason") or {}).items())
        console.info(f"{spent}; {rejected.get('rejected', 0)} infeasible draws rejected without a trial"
                     + (f" ({reasons})" if reasons else ""))
        if warm := info.get("warm_start"):
            # Told results are not trials of this run: the leaderboard above has what ran here only.
            console.info(f"warm start: {warm['told']} results of earlier runs told to Optuna without training (not "
                         f"in the leaderboard), {warm['enqueued']} configurations trained first")


def _costs(row: dict) -> list[str]:
    """What a trial cost, as far as recorded: ``1.2M params``, ``4.3 s/epoch``."""
    costs = []
    if not missing(row.get(PARAMETERS)):
        costs.append(f"{_count(row[PARAMETERS])} params")
    if not missing(row.get(SECONDS_PER_EPOCH)):
        costs.append(f"{_seconds(row[SECONDS_PER_EPOCH])} s/epoch")
    return costs


def _count(value) -> str:
    """A count at a glance: ``950``, ``85.3k``, ``1.2M``."""
    if missing(value):
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size * 0.9995:  # 999,999 is 1M, not 1e+03k
            return f"{value / size:.3g}{suffix}"
    return f"{int(value)}"


def _seconds(value) -> str:
    if missing(value):
        return "-"
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _fmt(value) -> str:
    return "-" if missing(value) else f"{value:.3f}"


def _short(value) -> str:
    if missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
