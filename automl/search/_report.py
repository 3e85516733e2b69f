"""What a search prints: a line per finished trial, and the leaderboard at the end."""

from __future__ import annotations

import math

import pandas as pd

from automl import console
from automl.layout import best_column, hp_column, hyperparameter_columns, hyperparameter_name
from automl.objective import Objective
from automl.store import RunStore

# Shown in progress lines when they are searched: the hyperparameters that matter most in the seeds.
KEY_HYPERPARAMETERS = ("conv_blocks", "base_filters", "filters", "dense_units", "optimizer", "learning_rate",
                       "imbalance", "batch_size", "pool_type")


class Report:
    def __init__(self, objective: Objective, num_samples: int, searched: list[str]):
        self.objective, self.num_samples = objective, num_samples
        self.shown = [n for n in KEY_HYPERPARAMETERS if n in searched][:5] or searched[:5]

    def trial_line(self, store: RunStore, trial_id: str) -> None:
        row = store.trials[trial_id]
        value = row.get(best_column(self.objective.name))
        params = ", ".join(f"{n}={_short(row.get(hp_column(n)))}"
                           for n in self.shown if row.get(hp_column(n)) is not None)
        status = row.get("status")
        what = (f"{status} after {int(row.get('epochs') or 0)} epochs" if status != "errored"
                else f"errored: {row.get('error')}")
        console.info(
            f"[{store.finished_count()}/{self.num_samples}] {trial_id} {what}  {self.objective.name} {_fmt(value)}  "
            f"best so far {_fmt(store.best_value())}  ({params})"
        )

    def leaderboard(self, trials: pd.DataFrame, top: int = 10) -> None:
        from rich.table import Table

        column = best_column(self.objective.name)
        if trials.empty or column not in trials:
            console.out.print("no trial finished an epoch")
            return
        ranked = self.objective.sort(trials, column).head(top)
        varying = [c for c in hyperparameter_columns(trials) if trials[c].nunique(dropna=True) > 1]
        # Key hyperparameters first and at most 10 in all, so the table stays readable;
        # trials.parquet has every one.
        hps = sorted(varying, key=lambda c: (hyperparameter_name(c) not in KEY_HYPERPARAMETERS, c))[:10]
        table = Table(title=f"leaderboard by {column} (top {len(ranked)} of {len(trials)} trials)")
        second = best_column("val_macro_f1") if self.objective.name != "val_macro_f1" else best_column("val_auc")
        for name in ("trial", "status", "epochs", self.objective.key, second.removeprefix("best_val_"),
                     *map(hyperparameter_name, hps)):
            table.add_column(name, justify="left" if name in ("trial", "status") else "right")
        for row in ranked.to_dict("records"):
            table.add_row(
                row["trial_id"], str(row.get("status")), str(int(row.get("epochs") or 0)), _fmt(row.get(column)),
                _fmt(row.get(second)), *[_short(row.get(h)) for h in hps],
            )
        console.out.print(table)


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _short(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
