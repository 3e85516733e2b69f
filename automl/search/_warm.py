"""Warm starts: a search that starts from other runs' configurations, and from their results when they compare.

``search.warm_start`` names earlier runs (``--warm-start RUN...``: run folders, or run names in ``--results``) and
``search.portfolio`` a YAML file of configurations (``automl/search_spaces/portfolios/``). Before the first trial:

- a run whose results compare with this search's (:func:`search_key`: the same data fingerprint, split (by its
  images), task, image size, hyperparameter space, objective, ``max_epochs`` and epoch definition) has each trial's
  best value told to Optuna as a completed trial, without training it: they count among TPE's start-up trials,
  and TPE models them with its own. They are not trials of this run (the results store holds what ran here only);
  ``run.json`` counts them.
- the best configurations of every other run (ranked by that run's own objective, taken in turn from each run),
  the compatible runs' too when the searcher is random (it learns nothing from results), then the portfolio's
  (Optuna searches only) are enqueued: the searcher's first draws are them, and they are trained here. At most
  :meth:`~automl.spec.SearchSettings.tpe_startup` of them: they take the place of TPE's random start-up trials.
- a configuration that does not fit this space (:meth:`automl.space.SearchSpace.configuration`) or cannot run at
  its image size, one already told or enqueued, and those beyond the limit are skipped, counted by reason.

What was done is recorded in ``run.json`` as ``warm_start`` and said in one line. A resumed search does none of it
again: Tune restores the searcher, and Optuna's study (in ``optuna.db``) still holds what was told and enqueued.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl import console
from automl.data import Dataset
from automl.errors import SpecError, UserError
from automl.layout import RunLayout, best_column, hyperparameter_columns, hyperparameter_name
from automl.objective import Objective
from automl.space import SearchSpace
from automl.spec import Spec, load_spec, read_yaml
from automl.store import FINISHED

#: ``search.portfolio``'s value for no portfolio.
NO_PORTFOLIO = "none"
#: The epoch definition of runs that do not record one (:data:`automl.trial.EPOCH_DEFINITION`).
FIRST_EPOCH_DEFINITION = 1
#: Keys a portfolio file may have.
PORTFOLIO_KEYS = ("description", "configurations")


@dataclass(frozen=True)
class SourceRun:
    """An earlier run named by ``search.warm_start``: its ``run.json``, its space (None when its ``spec.yaml`` is
    missing or no longer reads) and its trials."""

    root: Path
    info: dict
    space: SearchSpace | None
    trials: Any  # pandas DataFrame


@dataclass(frozen=True)
class Sources:
    """What a search is warm-started from, read and checked before anything is written."""

    runs: list[SourceRun]
    portfolio: Path | None = None
    configurations: list[dict] = field(default_factory=list)  # the portfolio's


@dataclass
class WarmStart:
    """What the searcher is told and given first; ``record`` is ``run.json``'s ``warm_start``."""

    told: list[tuple[dict, float, str]] = field(default_factory=list)  # (configuration, its best value, source)
    enqueued: list[tuple[dict, str]] = field(default_factory=list)  # (configuration, source)
    record: dict = field(default_factory=dict)

    def line(self) -> str:
        """One line saying what was told, enqueued and skipped, and from where."""
        runs = self.record["runs"]
        parts = [f"{_count(self.record['told'], 'result')} told to Optuna without training"
                 + _sources([(Path(r["run"]).name, r["told"], "") for r in runs if r["told"]])]
        froms = [(Path(r["run"]).name, r["enqueued"], _differ(r["differs"]) if r["differs"] else "random search")
                 for r in runs if r["enqueued"]]
        if (portfolio := self.record.get("portfolio")) and portfolio["enqueued"]:
            froms.append((f"portfolio {Path(portfolio['file']).name}", portfolio["enqueued"], ""))
        parts.append(f"{_count(self.record['enqueued'], 'configuration')} to train first" + _sources(froms))
        if self.record["skipped"]:
            reasons = ", ".join(f"{why} {n}" for why, n in self.record["skipped_by_reason"].items())
            parts.append(f"{self.record['skipped']} skipped ({reasons})")
        return "warm start: " + "; ".join(parts)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _differ(keys: list[str]) -> str:
    return f"{', '.join(keys)} differ{'s' if len(keys) == 1 else ''}"


def _sources(counts: list[tuple[str, int, str]]) -> str:
    return f" ({'; '.join(f'{name}: {n}' + (f', {why}' if why else '') for name, n, why in counts)})" if counts else ""


def read_sources(spec: Spec, results_dir: Path) -> Sources | None:
    """The runs and portfolio the spec names, read and checked (one :class:`UserError` line for a folder that is not
    a run, or a portfolio that is missing or malformed); None when there is nothing to start from."""
    settings = spec.search
    runs = [_read_run(name, Path(results_dir)) for name in settings.warm_start]
    if runs and settings.engine != "ray":
        raise UserError(f"--warm-start: the {settings.engine} engine cannot be warm-started; use --engine ray")
    portfolio, configurations = None, []
    if settings.portfolio != NO_PORTFOLIO:
        if settings.engine == "ray" and settings.searcher == "optuna":
            portfolio = find_portfolio(settings.portfolio, spec.source)
            configurations = read_portfolio(portfolio)
        else:
            console.info(f"note: portfolio {settings.portfolio} not used: it seeds Optuna searches only")
    if not runs and portfolio is None:
        return None
    return Sources(runs, portfolio, configurations)


def _read_run(name: str, results_dir: Path) -> SourceRun:
    places = list(dict.fromkeys([Path(name), results_dir / name]))
    for place in places:
        run = RunLayout(place)
        if run.info_file.is_file() and run.trial_table.exists():
            break
    else:
        raise UserError(f"--warm-start {name}: not a search run (no run.json and trials.parquet in "
                        f"{' or '.join(map(str, places))}); name a run folder, or a run in --results")
    try:
        space = load_spec(run.spec).space if run.spec.is_file() else None
    except SpecError:
        space = None  # written by an older version that no longer reads: its space cannot be compared
    return SourceRun(run.root.resolve(), run.read_info(required=True), space, run.read_trials())


def find_portfolio(value: str, spec_file: Path | None) -> Path:
    """The portfolio file ``search.portfolio`` names: relative to the spec's folder, else to the working directory."""
    path = Path(value).expanduser()
    places = [path] if path.is_absolute() else [*([Path(spec_file).parent / path] if spec_file else []), path]
    for place in dict.fromkeys(places):
        if place.is_file():
            return place.resolve()
    raise UserError(f"search.portfolio: {value} not found (looked for {' and '.join(map(str, dict.fromkeys(places)))}"
                    f"); give a portfolio file, or --portfolio {NO_PORTFOLIO}")


def read_portfolio(path: Path) -> list[dict]:
    """A portfolio's configurations: ``configurations:`` a list of mappings of hyperparameter names to values."""
    raw = read_yaml(path, "portfolio")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("configurations"), list):
        raise SpecError(f"{path}: a portfolio is a mapping with configurations: a list of hyperparameter mappings")
    unknown = [str(key) for key in raw if key not in PORTFOLIO_KEYS]
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(PORTFOLIO_KEYS)})")
    for i, configuration in enumerate(raw["configurations"]):
        if not isinstance(configuration, Mapping) or not all(isinstance(k, str) for k in configuration):
            raise SpecError(f"{path}: configurations[{i}]: expected a mapping of hyperparameter names to values")
    return [dict(configuration) for configuration in raw["configurations"]]


def search_key(spec: Spec, dataset: Dataset) -> dict[str, Any]:
    """What a run's results must share with this search's to be told without training: the same data, split (its
    images, not only its description), task and image size, the same space, objective and epochs per trial, and
    the same epoch definition."""
    from automl.trial import EPOCH_DEFINITION  # imports TensorFlow: not at module import

    return {"data_fingerprint": dataset.fingerprint, "split": dataset.split_protocol,
            "split_fingerprint": dataset.split_fingerprint, "task": dataset.task,
            "image_size": tuple(dataset.image_size), "hyperparameters": _space_key(spec.space),
            "objective": spec.objective, "max_epochs": spec.search.max_epochs, "epoch_definition": EPOCH_DEFINITION}


def run_key(run: SourceRun) -> dict[str, Any]:
    """:func:`search_key` of an earlier run, from its ``run.json`` and ``spec.yaml`` (a run recorded before split
    fingerprints has none: its results cannot be shown to share the split, and its configurations train again)."""
    info = run.info
    return {"data_fingerprint": info.get("data_fingerprint"), "split": info.get("split"),
            "split_fingerprint": info.get("split_fingerprint"), "task": info.get("task"),
            "image_size": tuple(info.get("image_size") or ()),
            "hyperparameters": _space_key(run.space) if run.space is not None else None,
            "objective": Objective.from_record(info), "max_epochs": info.get("max_epochs"),
            "epoch_definition": info.get("epoch_definition", FIRST_EPOCH_DEFINITION)}


def _space_key(space: SearchSpace) -> dict:
    return {d.name: d for d in space.dimensions}


def plan_warm_start(spec: Spec, sources: Sources | None, dataset: Dataset) -> WarmStart | None:
    """What to tell the searcher and what to give it first (see the module's text); None without sources."""
    if sources is None:
        return None
    here, optuna = search_key(spec, dataset), spec.search.searcher == "optuna"
    warm, seen, skipped = WarmStart(), set(), Counter()

    def accept(values: dict) -> dict | None:
        try:
            configuration = spec.space.configuration(values)
        except SpecError:
            skipped["outside_space"] += 1
            return None
        if spec.space.infeasible(configuration, dataset.image_size) is not None:
            skipped["infeasible"] += 1
            return None
        identity = repr(sorted(configuration.items()))  # values may be lists (one per block)
        if identity in seen:
            skipped["duplicate"] += 1
            return None
        seen.add(identity)
        return configuration

    runs, from_runs = [], []
    for run in sources.runs:
        there = run_key(run)
        differs = [key for key, value in here.items() if there[key] != value]
        objective = Objective.from_record(run.info)
        column = best_column(objective.name)
        trials = run.trials
        if column in trials:
            trials = objective.sort(trials[trials["status"].isin(FINISHED) & trials[column].notna()], column)
        else:
            trials = trials.iloc[:0]
        entry = {"run": str(run.root), "with_results": len(trials), "differs": differs, "told": 0, "enqueued": 0}
        runs.append(entry)
        rows = [(_hyperparameters(trials, row), row) for row in trials.to_dict("records")]
        if differs or not optuna:
            from_runs.append([(values, entry, f"{run.root.name}/{row['trial_id']}") for values, row in rows])
            continue
        for values, row in rows:
            if (configuration := accept(values)) is not None:
                warm.told.append((configuration, float(row[column]), f"{run.root.name}/{row['trial_id']}"))
                entry["told"] += 1
    portfolio, from_portfolio = None, []
    if sources.portfolio is not None:
        portfolio = {"file": str(sources.portfolio), "configurations": len(sources.configurations), "enqueued": 0}
        from_portfolio = [(values, portfolio, f"portfolio {sources.portfolio.name}#{i + 1}")
                          for i, values in enumerate(sources.configurations)]
    limit = spec.search.tpe_startup()
    for values, entry, source in _in_turn(from_runs) + from_portfolio:
        if len(warm.enqueued) >= limit:
            skipped["beyond_limit"] += 1
        elif (configuration := accept(values)) is not None:
            warm.enqueued.append((configuration, source))
            entry["enqueued"] += 1
    warm.record = {"runs": runs, "portfolio": portfolio, "told": len(warm.told), "enqueued": len(warm.enqueued),
                   "limit": limit, "skipped": sum(skipped.values()), "skipped_by_reason": dict(sorted(skipped.items()))}
    return warm


def _hyperparameters(trials, row: dict) -> dict:
    return {hyperparameter_name(c): row[c] for c in hyperparameter_columns(trials)}


def _in_turn(lists: list[list]) -> list:
    """The first of each list, then the second of each, ...: runs' scores are on their own data, not comparable."""
    longest = max((len(items) for items in lists), default=0)
    return [items[i] for i in range(longest) for items in lists if i < len(items)]
