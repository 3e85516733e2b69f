"""Hyperparameter importance: the run's trials replayed into an in-memory Optuna study."""

from __future__ import annotations

import optuna
import optuna.importance  # pulls in scipy and scikit-learn (seconds): paid at start-up, not on the first page
import pandas as pd

from automl.layout import best_column, hp_column, hyperparameter_columns, hyperparameter_name
from automl.objective import Objective
from automl.store import missing

# Numeric hyperparameters with at most this many values seen are treated as choices (e.g. conv_blocks).
MAX_CHOICES = 5
#: Trials beyond this are a random sample of this many: Optuna's study and PED-ANOVA cost grows faster than linearly
#: (about 1 s for 1,000 trials here, 10 s for 2,000), and a sample of 1,000 ranks the hyperparameters alike.
MAX_TRIALS = 1000


def param_importances(trials: pd.DataFrame, objective: Objective,
                      log_scaled: frozenset[str] = frozenset()) -> tuple[dict[str, float], list[str]]:
    """Optuna's importances (PED-ANOVA) of every searched hyperparameter for the trials' best objective.

    Uses completed and pruned trials (a pruned trial's value is its best epoch before it was
    stopped); ``log_scaled`` names the ranges the spec samples on a log scale. Returns the
    importances, largest first, and notes on what was done; empty importances and the reason
    when there is too little to go on.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per page view otherwise
    column = best_column(objective.name)
    if trials.empty or column not in trials or "status" not in trials:
        return {}, ["no trial has a value of the metric yet"]
    usable = trials[trials["status"].isin(["completed", "pruned"]) & trials[column].notna()]
    if len(usable) < 2:
        return {}, [f"needs at least 2 completed or pruned trials with a value; this run has {len(usable)}"]
    total = len(usable)
    if total > MAX_TRIALS:
        usable = usable.sample(MAX_TRIALS, random_state=0)
    distributions, fixed = {}, []
    for column_name in hyperparameter_columns(usable):
        values, name = usable[column_name].dropna(), hyperparameter_name(column_name)
        if values.nunique() < 2:
            fixed.append(name)
        else:
            distributions[name] = _distribution(values, name in log_scaled)
    if not distributions:
        return {}, ["every hyperparameter has one value in these trials"]
    conditional = [n for n in distributions if usable[hp_column(n)].isna().any()]
    study = optuna.create_study(direction=f"{objective.direction}imize")
    for row in usable.to_dict("records"):
        params = {n: _value(distributions[n], row[hp_column(n)]) for n in distributions
                  if not missing(row[hp_column(n)])}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: distributions[n] for n in params}, value=float(row[column])))
    try:
        importances = optuna.importance.get_param_importances(study)
    except Exception as exc:  # noqa: BLE001 - optuna's own limits (e.g. degenerate values): shown, not raised
        return {}, [f"optuna could not compute importances: {type(exc).__name__}: {exc}"]
    notes = [f"{len(usable)} completed and pruned trials, value = {column}; optuna PED-ANOVA"]
    if total > len(usable):
        notes[0] = f"a random {len(usable):,} of the {total:,} completed and pruned trials, value = {column}; " \
                   "optuna PED-ANOVA"
    if conditional:
        notes.append("conditional, so assessed over the trials where they exist: " + ", ".join(conditional))
    if fixed:
        notes.append("left out (one value in every trial): " + ", ".join(fixed))
    if len(usable) < 20:
        notes.append("fewer than 20 trials: treat these as a rough guide")
    return {n: float(v) for n, v in importances.items()}, notes


def _distribution(values: pd.Series, log: bool) -> optuna.distributions.BaseDistribution:
    """Categorical for strings, booleans and numbers with few values seen; int or float range otherwise."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric or values.nunique() <= MAX_CHOICES:
        return optuna.distributions.CategoricalDistribution(sorted({_plain(v) for v in values}, key=str))
    low, high = float(values.min()), float(values.max())
    log = log and low > 0
    if (values == values.round()).all():
        return optuna.distributions.IntDistribution(int(low), int(high), log=log)
    return optuna.distributions.FloatDistribution(low, high, log=log)


def _plain(value):
    """A Python scalar: Optuna rejects numpy types."""
    return value.item() if hasattr(value, "item") else value


def _value(distribution, value):
    # An int column with missing values is read back as floats.
    return int(value) if isinstance(distribution, optuna.distributions.IntDistribution) else _plain(value)
