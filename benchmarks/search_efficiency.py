"""Search efficiency: search methods on one space at equal compute (an epoch budget per search), several seeds each.

    python benchmarks/search_efficiency.py      # the full run: 6 methods x 3 seeds x 190 epochs (grace period 2)
    python benchmarks/search_efficiency.py --epoch-budget 10 --seeds 1 --methods random-asha,optuna-asha,kt-hyperband \\
        --space automl/search_spaces/quick.yaml --out /tmp/eff-smoke   # a smoke test, a few minutes

Compute is counted in equal-cost epochs: every epoch of every candidate draws as many training samples as the train
split has, whatever its imbalance strategy (``automl.trial.EPOCH_DEFINITION``), so an epoch costs the same data for
every method. Each search is a real ``automl search`` of the space (default the shipped ``ham10000_cnn.yaml`` with
its max_epochs, grace period and reduction factor) in its own process, with ``search.epoch_budget`` = N
(``--epoch-budget``) ending it; ``time_budget_s`` (``--time-cap``, default 2 h) is only a safety cap, and a search it
ends is flagged. num_samples is far above what N epochs can run, so it never ends a search.

Choosing N. ASHA gives every trial ``grace_period`` epochs and lets about 1/reduction_factor of them go on at each
rung, so a search of N epochs sees about N / E configurations, E being the epochs ASHA spends per configuration:
with rungs at g, g*rf, g*rf^2... below max_epochs, E = g + (g*rf - g)/rf + ... + the last rung's share of the way to
max_epochs (4.7 epochs for g 2, rf 3, max 20; 2.7 for g 1, 6.2 for g 3), times about 1.3 because ASHA promotes
generously while few results set its cut-offs (the two 40-trial Optuna + ASHA searches of ham10000_cnn at g 2 spent
5.5 and 6.8 epochs per configuration). The default N is 30 configurations' worth, rounded up to 10 epochs: 190 for
g 2 (110 for g 1, 250 for g 3). The script prints its estimate for the N given, and each ASHA search's actual count
(>= 30 or not) in the table and the JSON. KerasTuner's Hyperband runs one Hyperband iteration (226 epochs and 22
configurations at max_epochs 20, factor 3): a larger N ends it short of the budget, which the table shows ("ended
by"). The full run at the default N is about 18 x 190 epochs: some 8 h at the ~8 s per epoch two trials at a time
take here (12.9 s on one core over random draws, ``epoch_cost.json``), about 4.5 h at N 110 (grace period 1).

Methods (``--methods``, default the first six): ``random`` and ``random-asha`` (Ray Tune random search without and
with ASHA), ``optuna-asha`` (Optuna TPE with ASHA), ``optuna-asha-portfolio`` (the same, warm-started: Optuna trains
the configurations of the space's own ``search.portfolio`` first; reported apart from the cold methods, and left
out, with a note, when the space names no portfolio), ``kt-hyperband`` and ``kt-bayesian`` (KerasTuner's Hyperband
and BayesianOptimization, ``engine: keras-tuner``); ``optuna`` (TPE without ASHA) on request. Every method but the
warm-started one runs with ``portfolio: none``. The portfolio of ham10000_cnn.yaml was chosen from the
official-split run (``benchmarks/make_portfolio.py``), not from the benchmark's lesion-grouped split. Optuna's random
start-up trials are the product's rule (a fifth, at least 5) applied to the configurations the budget lets the
method see, not to num_samples (which would leave TPE in its start-up for the whole search); KerasTuner's
BayesianOptimization follows the same rule (5 trials at 20 epochs each here), not its own default of 3 per
hyperparameter (84), which would make it a random search within the budget. Ray methods run 2
trials at a time with 1 CPU each; KerasTuner runs one trial at a time in the search's process, TensorFlow using both
cores. The searcher seed (which also seeds every trial's weights) is 0..S-1; the data split is the space's.

Measured per method and seed, from the first N epochs the search recorded, in recorded order (a search may record
a few epochs past its budget, e.g. Ray trials in flight finishing theirs: the overrun is reported, not counted): best
validation score at the budget; epochs (summed over all the search's trials) and wall seconds (since
``run.json``'s ``started``: data loaded, Ray started) to reach the target, by default the median of random search's
bests at the budget; configurations seen (distinct hyperparameter sets: a Hyperband trial that continues an earlier
one is a new trial of the same configuration) and trials. Goals, for the cold Optuna + ASHA: it reaches the target in
at most a third of the epochs random search needs (medians over seeds), and ends ahead of both KerasTuner tuners.

Each search lands in ``OUT/runs/METHOD-seedK/`` (a results store; checkpoints are deleted). A search already
complete there with the same spec is reused, so an interrupted benchmark continues where it stopped, across sessions
(seed-major order: every method has its first seeds first); ``--fresh`` runs everything again; ``--report-only``
runs nothing and reports the complete searches (the table so far; the JSON lists the pending ones). Writes
``OUT/search_efficiency.json`` (budget, seeds, machine, every run's numbers and curve, the summary),
``OUT/search_efficiency.md`` (the tables and the goals, as printed) and ``OUT/search_efficiency.png`` (best so far
versus epochs, every method in one panel).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CHANCE_MARGIN,
    DEFAULT_DATA,
    DEFAULT_OUT,
    REPO,
    RUNS,
    at_chance,
    check_idle,
    fmt,
    mark_complete,
    markdown_table,
    print_table,
    read_search,
    reusable,
    run_search_process,
    save_figure,
    write_result,
    write_text_result,
)

from automl import console
from automl.data import class_names
from automl.errors import UserError
from automl.layout import RunLayout, hyperparameter_columns, last_column
from automl.objective import Objective
from automl.search._warm import NO_PORTFOLIO, find_portfolio, read_portfolio
from automl.spec import SearchSettings, Spec, load_spec, read_yaml, search_overrides


@dataclass(frozen=True)
class Method:
    label: str
    settings: dict[str, Any]  # search settings by SearchSettings field name
    warm: bool = False  # trains the space's portfolio first: reported apart from the cold methods

    @property
    def asha(self) -> bool:
        return self.settings.get("scheduler") == "asha"

    @property
    def model_based(self) -> bool:
        """Optuna's TPE or KerasTuner's Gaussian process: random start-up trials first (the product's rule)."""
        return self.settings.get("searcher") == "optuna" or self.settings.get("keras_tuner") == "bayesian"


# Ray methods: 2 concurrent trials of 1 CPU, the machine's 2 cores.
RAY = {"engine": "ray", "max_concurrent": 2, "cpu": 1}
METHODS: dict[str, Method] = {
    "random": Method("random search", RAY | {"searcher": "random", "scheduler": "none"}),
    "random-asha": Method("random + ASHA", RAY | {"searcher": "random", "scheduler": "asha"}),
    "optuna-asha": Method("Optuna TPE + ASHA", RAY | {"searcher": "optuna", "scheduler": "asha"}),
    "optuna-asha-portfolio": Method("Optuna TPE + ASHA + portfolio (warm-started)",
                                    RAY | {"searcher": "optuna", "scheduler": "asha"}, warm=True),
    "kt-hyperband": Method("KerasTuner Hyperband", {"engine": "keras-tuner", "keras_tuner": "hyperband"}),
    "kt-bayesian": Method("KerasTuner Bayesian", {"engine": "keras-tuner", "keras_tuner": "bayesian"}),
    "optuna": Method("Optuna TPE", RAY | {"searcher": "optuna", "scheduler": "none"}),
}
DEFAULT_METHODS = ["random", "random-asha", "optuna-asha", "optuna-asha-portfolio", "kt-hyperband", "kt-bayesian"]
WARM_METHOD = "optuna-asha-portfolio"
COLORS = {"random": "tab:gray", "random-asha": "tab:olive", "optuna": "tab:cyan", "optuna-asha": "tab:blue",
          "optuna-asha-portfolio": "tab:purple", "kt-hyperband": "tab:red", "kt-bayesian": "tab:orange"}
NUM_SAMPLES = 100_000  # far more trials than any epoch budget here can run: the budget ends every search
CONFIGS_GOAL = 30  # configurations each ASHA search should see within the budget (the issue's)
DEFAULT_TIME_CAP_S = 7200  # a safety cap only: the epoch budget should end every search long before
STOP_GRACE_S = 60  # past the time cap before a search still running (a KerasTuner trial) is stopped
START_OVERHEAD_S = 35  # per search: Python + TensorFlow import, data, Ray start and stop
# For the duration estimate only: epoch_cost.json measured 12.9 s per epoch on one core (mean over 20 random draws
# of ham10000_cnn at 28 px); two trials share the 2 cores, each a little slower than alone.
SECONDS_PER_EPOCH_GUESS = 8
EPOCHS_GOAL = 1 / 3  # Optuna + ASHA's epochs to the target, as a fraction of random search's


def metric_label(metric: str) -> str:
    """``val_balanced_accuracy`` -> ``validation balanced accuracy``."""
    return "validation " + metric.removeprefix("val_").replace("_", " ")


# --- the budget ----------------------------------------------------------------------------------


def epochs_per_config(settings: SearchSettings, method: Method) -> float:
    """About how many epochs a method spends per configuration: the product's estimate, for its settings."""
    return replace(settings, **method.settings).expected_epochs_per_configuration()


def default_budget(settings: SearchSettings) -> int:
    """Epochs for :data:`CONFIGS_GOAL` configurations of an ASHA search, rounded up to 10."""
    return int(math.ceil(CONFIGS_GOAL * epochs_per_config(settings, METHODS["optuna-asha"]) / 10) * 10)


def tpe_startup(budget: int, settings: SearchSettings, method: Method) -> int:
    """The product's start-up rule (``SearchSettings.tpe_startup``: a fifth of the configurations the budget lets
    the method see), written into the spec: searches recorded before the product applied the budget itself keep
    their spec and are reused."""
    return replace(settings, **method.settings, epoch_budget=budget, tpe_startup_trials=None).tpe_startup()


# --- the searches --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-budget", type=int,
                        help=f"equal-cost epochs per method and seed (default: {CONFIGS_GOAL} configurations' worth "
                             "of ASHA on the space, rounded up to 10: 190 for ham10000_cnn.yaml)")
    parser.add_argument("--time-cap", type=float, default=DEFAULT_TIME_CAP_S,
                        help=f"wall-clock seconds after which a search is ended whatever its epochs (a safety cap; "
                             f"default {DEFAULT_TIME_CAP_S})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method: 0..N-1 (default 3)")
    parser.add_argument("--methods", help=f"comma-separated, of: {', '.join(METHODS)} "
                                          f"(default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="HAM10000 folder (default ../shared/data/ham10000_28)")
    parser.add_argument("--space", type=Path, default=REPO / "automl" / "search_spaces" / "ham10000_cnn.yaml",
                        help="search spec (default automl/search_spaces/ham10000_cnn.yaml)")
    parser.add_argument("--max-epochs", type=int,
                        help="epochs per trial at most (default: the space's search.max_epochs)")
    parser.add_argument("--target", type=float,
                        help="target value (default: median of random search's bests at the budget)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/benchmarks)")
    parser.add_argument("--fresh", action="store_true", help="delete and redo searches already complete in OUT/runs")
    parser.add_argument("--report-only", action="store_true",
                        help="run no search: report the complete ones (an unfinished benchmark's table so far; the "
                             "JSON lists what is pending)")
    args = parser.parse_args(argv)
    args.methods_given = args.methods is not None
    args.methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods_given
                    else list(DEFAULT_METHODS))
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.epoch_budget is not None and args.epoch_budget < 1:
        parser.error("--epoch-budget must be at least 1 epoch")
    if args.time_cap < 60:
        parser.error("--time-cap must be at least 60 seconds")
    if args.fresh and args.report_only:
        parser.error("--fresh and --report-only: choose one")
    return args


def space_portfolio(base: Spec) -> Path | None:
    """The portfolio file the space names (absolute: the search reads its spec from the run folder), or None."""
    if base.search.portfolio == NO_PORTFOLIO:
        return None
    return find_portfolio(base.search.portfolio, base.source)


def method_spec(base: Spec, method: str, seed: int, args: argparse.Namespace, portfolio: Path | None) -> Spec:
    """The space's spec with one method's search settings, the budgets and the seed."""
    how = METHODS[method]
    settings = how.settings | {"num_samples": NUM_SAMPLES, "epoch_budget": args.epoch_budget,
                               "time_budget_s": args.time_cap, "seed": seed,
                               # Only the warm-started method starts from the portfolio.
                               "portfolio": str(portfolio) if how.warm else NO_PORTFOLIO}
    if how.settings.get("searcher") == "optuna":
        settings["tpe_startup_trials"] = tpe_startup(args.epoch_budget, base.search, how)
    return base.with_overrides(search_overrides(settings))


#: What :func:`run_method` gives for a search that is not complete and ``--report-only`` does not run.
PENDING = "pending"


def run_method(args: argparse.Namespace, spec: Spec, method: str, seed: int) -> dict[str, Any] | str | None:
    """Run (or reuse) one method-seed search and measure it; None if the search failed, :data:`PENDING` if it is
    not complete and ``--report-only`` leaves it."""
    run_dir = args.out / RUNS / f"{method}-seed{seed}"
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    # The spec names the portfolio's file, not what it holds: a search from another version of it is not reused.
    portfolio = spec.search.portfolio
    digest = None if portfolio == NO_PORTFOLIO else hashlib.sha256(Path(portfolio).read_bytes()).hexdigest()
    reused = (reusable(run_dir, portfolio_as_stored(spec, run_dir), args.data.resolve())
              and RunLayout(run_dir).read_info().get("benchmark", {}).get("portfolio_sha256") == digest)
    if not reused and args.report_only:
        return PENDING
    if not reused:
        console.info(f"running {method} seed {seed} ({args.epoch_budget} epochs; log: {run_dir / 'search.log'})")
        outcome = run_search_process(spec, args.data.resolve(), run_dir, stop_after_s=args.time_cap + STOP_GRACE_S)
        if not mark_complete(outcome, budget_s=args.time_cap, method=method, seed=seed,
                             epoch_budget=args.epoch_budget, portfolio_sha256=digest):
            return None
    return (measure(run_dir, args.epoch_budget, args.time_cap, spec.objective, len(class_names(spec.data.task)),
                    first_rung=spec.search.grace_period if METHODS[method].asha else None)
            | {"method": method, "seed": seed, "reused": reused})


def portfolio_as_stored(spec: Spec, run_dir: Path) -> Spec:
    """``spec`` with the portfolio file named as the search in ``run_dir`` named it, for the reuse check: the path is
    absolute, so it depends on where the benchmark's code was checked out, and the check compares what the file
    holds (its digest) instead."""
    stored = RunLayout(run_dir).spec
    if spec.search.portfolio == NO_PORTFOLIO or not stored.is_file():
        return spec
    search = (read_yaml(stored, "spec") or {}).get("search")
    named = search.get("portfolio") if isinstance(search, dict) else None
    if not isinstance(named, str) or named == NO_PORTFOLIO:
        return spec
    return spec.with_overrides(search_overrides({"portfolio": named}))


def last_line(log: Path) -> str:
    """The last non-empty line of a search's log: its error, when it failed."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def measure(run_dir: Path, budget: int, time_cap: float, objective: Objective, n_classes: int,
            first_rung: int | None = None) -> dict[str, Any]:
    """Best-so-far curve and counts of one search, from the first ``budget`` epochs it recorded. ``first_rung``:
    ASHA's, to count the trials it stopped there while still at chance (None: no ASHA)."""
    search = read_search(run_dir)
    metric = objective.name
    recorded = len(search.epochs)
    epochs = search.epochs.iloc[:budget]
    values = epochs[metric].to_numpy(dtype=float) if recorded else np.array([])
    best = objective.running_best(pd.Series(values)).to_numpy() if len(values) else values
    ids = set(epochs["trial_id"]) if recorded else set()
    trials = search.trials
    in_budget = trials[trials["trial_id"].isin(ids)] if not trials.empty else trials
    hp_columns = hyperparameter_columns(trials)
    at_budget = float(epochs["t"].iloc[-1]) if recorded else None
    errored = 0
    if {"started_at", "status"} <= set(trials.columns):
        late = (trials["started_at"] - search.started > at_budget) if recorded >= budget else False
        errored = int(((trials["status"] == "errored") & ~late).sum())
    benchmark = search.info.get("benchmark", {})
    capped = bool(benchmark.get("stopped_after_budget")) or (search.info.get("wall_s") or 0) >= time_cap
    ended_by = ("epoch budget" if recorded >= budget else "time cap" if capped
                else "the search itself (no trial left)")
    return {
        "run_dir": str(run_dir),
        "metric": metric,
        "best_at_budget": float(best[-1]) if len(best) else math.nan,
        "epochs_counted": len(best),
        "epochs_recorded": recorded,
        "overrun_epochs": max(0, recorded - budget),
        "ended_by": ended_by,
        "wall_at_budget_s": at_budget,
        "trials": len(ids),
        "configs": len(in_budget[hp_columns].astype(str).drop_duplicates()) if hp_columns else len(ids),
        "errored": errored,
        "pruned_at_chance": pruned_at_chance(in_budget, first_rung, metric, n_classes),
        "split": search.info.get("split"),
        "warm_start": search.info.get("warm_start"),  # what the search trained first, and what it skipped
        "search_seconds": benchmark.get("seconds"),
        "stopped_after_time_cap": benchmark.get("stopped_after_budget"),
        # One point per epoch counted: [seconds since the search began, best so far]; the i-th point is
        # cumulative epoch i + 1.
        "curve": [[round(float(t), 2), float(b)] for t, b in zip(epochs["t"], best, strict=True)] if len(best) else [],
    }


def pruned_at_chance(trials: pd.DataFrame, first_rung: int | None, metric: str, n_classes: int) -> int | None:
    """Trials ASHA stopped at its first rung while at chance: the start-up plateau, where a rung decides nothing."""
    column = last_column(metric)
    if first_rung is None or metric != "val_balanced_accuracy" or column not in trials:
        return None
    stopped = trials[(trials["status"] == "pruned") & (trials["epochs"] == first_rung)]
    return int(sum(at_chance(value, n_classes) for value in stopped[column].dropna()))


# --- the report ----------------------------------------------------------------------------------


def reach(run: dict[str, Any], target: float, objective: Objective) -> None:
    """Add wall time and epochs to the target (None: not reached within the budget)."""
    hit = next((i for i, (_, b) in enumerate(run["curve"]) if not objective.better(target, b)), None)
    run["time_to_target_s"] = None if hit is None else run["curve"][hit][0]
    run["epochs_to_target"] = None if hit is None else hit + 1


def choose_target(runs: list[dict[str, Any]], given: float | None) -> tuple[float, str]:
    """The target value and where it came from."""
    if given is not None:
        return given, "given with --target"
    random_bests = [r["best_at_budget"] for r in runs
                    if r["method"] == "random" and not math.isnan(r["best_at_budget"])]
    if random_bests:
        return (float(np.median(random_bests)),
                f"median of random search's bests at the budget over {len(random_bests)} seed(s)")
    bests = [r["best_at_budget"] for r in runs if not math.isnan(r["best_at_budget"])]
    if not bests:
        return math.nan, "undefined: no search recorded an epoch within the budget"
    return float(np.median(bests)), "median of all searches' bests at the budget (random search did not run)"


def median_or_none(values: list[float | None]) -> float | None:
    """Median over seeds counting 'not reached' (None) as infinitely late; None when the median seed did not reach."""
    if not values:
        return None
    median = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(median) else median


def configs_ok(run: dict[str, Any]) -> bool | None:
    """Whether an ASHA search saw :data:`CONFIGS_GOAL` configurations within the budget (None: not ASHA)."""
    return run["configs"] >= CONFIGS_GOAL if METHODS[run["method"]].asha else None


def summarise(runs: list[dict[str, Any]], methods: list[str], budget: int) -> dict[str, dict[str, Any]]:
    """Per method, over its seeds: the best at the budget (mean, sd, range), medians to the target, mean counts."""
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        bests = np.array([r["best_at_budget"] for r in mine], dtype=float)
        checked = [configs_ok(r) for r in mine]
        summary[method] = {
            "label": METHODS[method].label,
            "warm_started": METHODS[method].warm,
            "seeds": len(mine),
            "best_mean": float(np.nanmean(bests)) if len(mine) else None,
            "best_sd": float(np.nanstd(bests, ddof=1)) if len(mine) > 1 else None,
            "best_min": float(np.nanmin(bests)) if len(mine) else None,
            "best_max": float(np.nanmax(bests)) if len(mine) else None,
            "time_to_target_s_median": median_or_none([r["time_to_target_s"] for r in mine]),
            "epochs_to_target_median": median_or_none([r["epochs_to_target"] for r in mine]),
            "reached": sum(r["epochs_to_target"] is not None for r in mine),
            "configs_mean": float(np.mean([r["configs"] for r in mine])) if mine else None,
            "trials_mean": float(np.mean([r["trials"] for r in mine])) if mine else None,
            "configs_goal_met": None if not METHODS[method].asha else sum(bool(c) for c in checked),
            "pruned_at_chance_mean": (float(np.mean([r["pruned_at_chance"] for r in mine]))
                                      if mine and all(r.get("pruned_at_chance") is not None for r in mine) else None),
            "overrun_max": max((r["overrun_epochs"] for r in mine), default=None),
            "short_of_budget": sum(r["epochs_counted"] < budget for r in mine),
        }
    return summary


def seeds_ahead(runs: list[dict[str, Any]], method: str, rival: str, objective: Objective) -> tuple[int, int]:
    """At how many of the seeds both methods ran ``method`` ended with a better best than ``rival``, of how many."""
    best = {(r["method"], r["seed"]): r["best_at_budget"] for r in runs}
    seeds = sorted(seed for m, seed in best if m == method and (rival, seed) in best)
    return sum(objective.better(best[method, s], best[rival, s]) for s in seeds), len(seeds)


def goals(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], objective: Objective) -> dict[str, Any]:
    """The issue's two goals for the cold Optuna + ASHA, each with a sentence saying whether it is met; and the
    warm-started method's epochs to the target, reported apart (not a goal)."""
    out: dict[str, Any] = {}
    random = summary.get("random")
    for method, key in (("optuna-asha", "epochs"), (WARM_METHOD, "warm_epochs")):
        ours = summary.get(method)
        if not (ours and random and ours["seeds"] and random["seeds"]):
            continue
        mine, theirs = ours["epochs_to_target_median"], random["epochs_to_target_median"]
        ratio = mine / theirs if mine is not None and theirs else None
        met = ratio is not None and ratio <= EPOCHS_GOAL
        who = "Optuna + ASHA" if method == "optuna-asha" else "the warm-started search"
        why = (f"{mine:.0f} / {theirs:.0f} epochs = {ratio:.2f}" if ratio is not None
               else f"{who}'s median seed did not reach the target" if mine is None
               else "random search's median seed did not reach the target")
        out[f"{key}_ratio"] = ratio
        if method == "optuna-asha":
            out["epochs_goal_met"] = met
            out["epochs_sentence"] = (f"epochs to target, Optuna + ASHA / random search (medians over seeds): {why} "
                                      f"(goal <= {EPOCHS_GOAL:.2f}): {'goal met' if met else 'goal not met'}")
        else:
            out["warm_epochs_sentence"] = (f"warm-started, reported apart: epochs to target, {ours['label']} / "
                                           f"random search: {why}")
    ours = summary.get("optuna-asha")
    rivals = {m: s["best_mean"] for m, s in summary.items() if m.startswith("kt-") and s["seeds"]}
    if ours and ours["seeds"] and rivals:
        met = all(objective.better(ours["best_mean"], v) for v in rivals.values())
        ahead = {m: seeds_ahead(runs, "optuna-asha", m, objective) for m in rivals}
        shown = ", ".join(f"{summary[m]['label']} {v:.3f}" for m, v in rivals.items())
        out["ahead_of_keras_tuner"] = met
        out["seeds_ahead_of_keras_tuner"] = {m: {"ahead": a, "seeds": n} for m, (a, n) in ahead.items()}
        out["keras_tuner_sentence"] = (
            f"best at the budget, mean over seeds: Optuna + ASHA {ours['best_mean']:.3f} vs {shown}: "
            f"{'goal met' if met else 'goal not met'}; seed by seed, Optuna + ASHA ahead of "
            + ", ".join(f"{summary[m]['label']} at {a} of {n}" for m, (a, n) in ahead.items()))
    return out


def seeds_sentence(summary: dict[str, dict[str, Any]], seeds: int) -> tuple[str, dict[str, Any]]:
    """What this many seeds can and cannot show, from the spread between seeds of the cold methods."""
    sds = [s["best_sd"] for m, s in summary.items()
           if not METHODS[m].warm and s["best_sd"] is not None and not math.isnan(s["best_sd"])]
    if seeds < 2 or not sds:
        return ("one seed per method: the spread between seeds is not measured, so no difference between methods "
                "can be told from seed luck", {"seeds": seeds})
    from scipy.stats import t

    pooled = float(np.sqrt(np.mean(np.square(sds))))
    se = pooled / math.sqrt(seeds)
    # A two-sided t-test at 5% between two methods' means, seeds methods apart, both with the pooled sd.
    resolvable = float(t.ppf(0.975, 2 * seeds - 2) * pooled * math.sqrt(2 / seeds))
    sentence = (f"What {seeds} seeds can show: the best at the budget varies between seeds with sd {pooled:.3f} "
                f"(pooled over the cold methods), so a method's mean is known to about ± {se:.3f} (its standard "
                f"error) and two means must be about {resolvable:.3f} apart before a t-test at 5% tells them apart. "
                f"A gap of that size, or one method ahead at every seed, can be shown; a ranking of methods closer "
                f"than that, and any sd itself (estimated from {seeds} values), cannot.")
    return sentence, {"seeds": seeds, "pooled_sd": pooled, "standard_error": se, "resolvable_difference": resolvable}


def warm_lines(runs: list[dict[str, Any]]) -> list[str]:
    """For each warm-started search, how many of the portfolio's configurations it trained first (and why not all)."""
    lines = []
    for run in (r for r in runs if METHODS[r["method"]].warm):
        record = run["warm_start"] or {}
        portfolio = record.get("portfolio") or {}
        enqueued, skipped = portfolio.get("enqueued", 0), record.get("skipped_by_reason") or {}
        lines.append(f"{METHODS[run['method']].label} seed {run['seed']}: trained {enqueued} of the portfolio's "
                     f"{portfolio.get('configurations', 0)} configurations first"
                     + (f" (skipped: {', '.join(f'{why} {n}' for why, n in skipped.items())})" if skipped else "")
                     + ("" if enqueued else ": NOT warm-started, its row is a cold search"))
    return lines


def method_groups(methods: list[str]) -> list[list[str]]:
    """The cold methods, then the warm-started ones (a group left out when empty)."""
    return [g for g in ([m for m in methods if not METHODS[m].warm], [m for m in methods if METHODS[m].warm]) if g]


def tables(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], methods: list[str], target: float,
           source: str, budget: int) -> list[dict[str, Any]]:
    """The summary table (a row per method, the warm-started apart) and every seed's own row, each as the keyword
    arguments of ``print_table`` and ``markdown_table``."""
    rows: list[list[Any] | None] = []
    for group in method_groups(methods):
        if rows:
            rows.append(None)
        for method in group:
            s = summary[method]
            if not s["seeds"]:
                rows.append([s["label"], 0, *["-"] * 9])
                continue
            goal = "-" if s["configs_goal_met"] is None else f"{s['configs_goal_met']}/{s['seeds']}"
            rows.append([s["label"], s["seeds"], f"{fmt(s['best_mean'])} ± {fmt(s['best_sd'])}",
                         f"{fmt(s['best_min'])}-{fmt(s['best_max'])}",
                         fmt(s["epochs_to_target_median"], 0, "not reached"),
                         fmt(s["time_to_target_s_median"], 0, "not reached"), f"{s['reached']}/{s['seeds']}",
                         fmt(s["configs_mean"], 1), fmt(s["trials_mean"], 1), goal, s["overrun_max"]])
    label = metric_label(runs[0]["metric"])
    summary_table = dict(
        title=f"Search efficiency at {budget} equal-cost epochs per search: {label} (target {target:.3f})",
        columns=["method", "seeds", "best (mean ± sd)", "min-max", "epochs to target", "wall s to target", "reached",
                 "configs", "trials", f">= {CONFIGS_GOAL} configs", "overrun"],
        rows=rows,
        caption=f"best: at the budget (the first {budget} epochs each search recorded). target = {target:.3f}, the "
                f"{source}. Epochs and wall seconds to target: median over seeds ('not reached' when the median seed "
                "did not reach it within the budget); epochs are summed over a search's trials in recorded order. "
                "configs (distinct hyperparameter sets) and trials: mean per search within the budget. "
                f">= {CONFIGS_GOAL} configs: ASHA searches that saw that many. overrun: most epochs a search recorded "
                "past its budget (not counted)."
                + (" After the break: warm-started, not compared with the cold methods."
                   if len(method_groups(methods)) > 1 else ""),
    )
    rows = []
    for group in method_groups(methods):
        if rows:
            rows.append(None)
        for run in (r for m in group for r in runs if r["method"] == m):
            ok = configs_ok(run)
            mark = "" if ok is None else " ✓" if ok else " ✗"
            rows.append([METHODS[run["method"]].label, run["seed"], fmt(run["best_at_budget"]),
                         "-" if run["epochs_to_target"] is None else run["epochs_to_target"],
                         fmt(run["time_to_target_s"], 0), f"{run['configs']}{mark}",
                         run["trials"], run["errored"], fmt(run.get("pruned_at_chance"), 0),
                         f"{run['epochs_counted']}/{budget}", run["overrun_epochs"],
                         fmt(run["wall_at_budget_s"], 0), run["ended_by"], "yes" if run["reused"] else "no"])
    seed_table = dict(
        title="Every seed",
        columns=["method", "seed", "best", "epochs to target", "wall s to target", "configs", "trials", "errored",
                 "pruned at chance", "epochs counted", "overrun", "wall s at budget", "ended by", "reused"],
        rows=rows, left=["ended by"],
        caption=f"'-': not reached within the budget. configs: ✓ / ✗ whether an ASHA search saw >= {CONFIGS_GOAL}. "
                "errored: trials that failed before the budget was spent. pruned at chance: trials ASHA stopped at "
                f"its first rung while within {CHANCE_MARGIN} of chance (the start-up plateau). wall s at budget: "
                "when the last epoch counted was recorded.",
    )
    return [summary_table, seed_table]


def plot(runs: list[dict[str, Any]], methods: list[str], target: float, budget: int, path: Path, title: str) -> None:
    """Best so far versus cumulative equal-cost epochs, every method in one panel: a thin line per seed, the median
    thick (dashed for the warm-started method), the target dotted."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5), layout="constrained")
    for method in methods:
        curves = [np.array(r["curve"]) for r in runs if r["method"] == method and r["curve"]]
        if not curves:
            continue
        color, how = COLORS[method], METHODS[method]
        for curve in curves:
            ax.step(np.arange(1, len(curve) + 1), curve[:, 1], where="post", color=color, lw=0.8, alpha=0.35)
        counts = np.arange(1, max(len(c) for c in curves) + 1)
        stepped = [step_at(np.arange(1, len(c) + 1), c[:, 1], counts, end=len(c)) for c in curves]
        ax.plot(counts, np.median(stepped, axis=0), color=color, lw=2.5, drawstyle="steps-post",
                ls="--" if how.warm else "-", label=f"{how.label} (median of {len(curves)})")
    ax.axhline(target, color="black", ls=":", lw=1)
    ax.text(0, target, " target", va="bottom", ha="left", fontsize=8)
    ax.axvline(budget, color="black", lw=0.8)
    ax.grid(alpha=0.3)
    ax.set(xlabel="equal-cost epochs trained, summed over the search's trials",
           ylabel=f"best {metric_label(runs[0]['metric'])} so far", xlim=(0, budget * 1.02))
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def step_at(xs: np.ndarray, values: np.ndarray, at: np.ndarray, end: float | None = None) -> np.ndarray:
    """A step curve's value at each point of ``at``: NaN before its first point (and after ``end``)."""
    index = np.searchsorted(xs, at, side="right") - 1
    out = np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)
    return out if end is None else np.where(at > end, np.nan, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        base = load_spec(args.space)
        base = base.with_overrides(search_overrides({"max_epochs": args.max_epochs}))  # validated up front
        portfolio = space_portfolio(base)
        if portfolio is None and WARM_METHOD in args.methods:
            if args.methods_given:
                raise UserError(f"--methods {WARM_METHOD}: {args.space} names no search.portfolio to warm-start "
                                "from; leave the method out, or use a space that names one")
            args.methods.remove(WARM_METHOD)
            console.info(f"note: {WARM_METHOD} left out: {args.space} names no search.portfolio")
        if portfolio is not None and WARM_METHOD in args.methods:
            read_portfolio(portfolio)  # a malformed file fails here, not in every seed's search
        settings = base.search
        args.epoch_budget = args.epoch_budget or default_budget(settings)
        specs = {m: method_spec(base, m, 0, args, portfolio) for m in args.methods}  # validated up front
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load = check_idle()
    plan = [(method, seed) for seed in range(args.seeds) for method in args.methods]
    per_config = epochs_per_config(settings, METHODS["optuna-asha"])
    expected = args.epoch_budget / per_config
    console.info(
        f"{len(plan)} searches of {args.epoch_budget} equal-cost epochs ({len(args.methods)} methods x {args.seeds} "
        f"seeds) on {args.space.name}, max {settings.max_epochs} epochs per trial; about "
        f"{len(plan) * (args.epoch_budget * SECONDS_PER_EPOCH_GUESS + START_OVERHEAD_S) / 3600:.1f} h if none can be "
        f"reused (at about {SECONDS_PER_EPOCH_GUESS} s per epoch)"
    )
    console.info(
        f"ASHA (grace period {settings.grace_period}, reduction factor {settings.reduction_factor}, rungs at "
        f"{', '.join(map(str, settings.asha_rungs()))} of {settings.max_epochs} epochs) spends about {per_config:.1f} "
        f"epochs per configuration: {args.epoch_budget} epochs give about {expected:.0f} configurations"
        + ("" if expected >= CONFIGS_GOAL else
           f", fewer than {CONFIGS_GOAL}: {CONFIGS_GOAL} need about {default_budget(settings)} epochs")
    )
    runs, failed, pending = [], [], []
    # Seed-major order: an interrupted benchmark has every method at the first seeds, and drifts in the
    # machine's load spread over all methods alike.
    for i, (method, seed) in enumerate(plan, start=1):
        try:
            run = run_method(args, method_spec(base, method, seed, args, portfolio), method, seed)
        except KeyboardInterrupt:
            print(f"interrupted at {method} seed {seed}; run the same command again to continue (complete searches "
                  "are reused)", file=sys.stderr)
            return 130
        if run == PENDING:
            pending.append({"method": method, "seed": seed})
            print(f"[{i:>2}/{len(plan)}] {method:<21} seed {seed}: not complete (left by --report-only)", flush=True)
            continue
        if run is None:
            log = args.out / RUNS / f"{method}-seed{seed}" / "search.log"
            failed.append({"method": method, "seed": seed, "log": str(log), "last_line": last_line(log)})
            print(f"[{i:>2}/{len(plan)}] {method:<21} seed {seed}: the search failed: {failed[-1]['last_line']} "
                  f"(log: {log})", flush=True)
            continue
        runs.append(run)
        took = "reused" if run["reused"] else f"search took {run['search_seconds']:.0f} s"
        print(f"[{i:>2}/{len(plan)}] {method:<21} seed {seed}: best {fmt(run['best_at_budget'])} at "
              f"{run['epochs_counted']} epochs, {run['configs']} configs ({run['trials']} trials, {run['errored']} "
              f"errored), overrun {run['overrun_epochs']}, ended by {run['ended_by']} ({took})", flush=True)
    if not runs:
        print("no search completed; nothing to report", file=sys.stderr)
        return 1
    objective = specs[args.methods[0]].objective
    target, source = choose_target(runs, args.target)
    for run in runs:
        reach(run, target, objective)
        run["configs_goal_met"] = configs_ok(run)
    summary = summarise(runs, args.methods, args.epoch_budget)
    checks = goals(summary, runs, objective)
    spread, spread_record = seeds_sentence(summary, args.seeds)
    shown = tables(summary, runs, args.methods, target, source, args.epoch_budget)
    for table in shown:
        print_table(**table)
    findings = []  # printed, and written under the tables in search_efficiency.md
    short = [r for r in runs if r["epochs_counted"] < args.epoch_budget]
    asha = [r for r in runs if configs_ok(r) is not None]
    if asha:
        seen = sum(bool(configs_ok(r)) for r in asha)
        findings.append(f"ASHA searches that saw >= {CONFIGS_GOAL} configurations within the budget: {seen} of "
                        f"{len(asha)}" + ("" if seen == len(asha) else
                                          f" (a larger --epoch-budget gives more; the estimate for {CONFIGS_GOAL} "
                                          f"was {default_budget(settings)} epochs)"))
    if short:
        findings.append(f"{len(short)} search(es) recorded fewer epochs than the budget (not equal compute): "
                        + ", ".join(f"{r['method']} seed {r['seed']} ({r['epochs_counted']}, ended by "
                                    f"{r['ended_by']})" for r in short))
    findings += [checks[key] for key in ("epochs_sentence", "keras_tuner_sentence", "warm_epochs_sentence")
                 if key in checks]
    findings += [spread, *warm_lines(runs)]
    if failed:
        findings.append(f"{len(failed)} search(es) failed and are left out: "
                        + ", ".join(f"{f['method']} seed {f['seed']}" for f in failed))
    if pending:
        findings.append(f"PARTIAL: {len(runs)} of {len(plan)} searches complete; {len(pending)} pending (run "
                        "without --report-only to continue): the target, the summary and the goals are those of the "
                        "complete ones")
    for line in findings:
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    warm = None
    if portfolio is not None and WARM_METHOD in args.methods:
        # Where the portfolio came from (its file says) beside the benchmark's own split: they should differ.
        warm = {"method": WARM_METHOD, "portfolio": str(portfolio), "configurations": len(read_portfolio(portfolio)),
                "description": read_yaml(portfolio, "portfolio").get("description"),
                "benchmark_split": runs[0]["split"]}
    write_result(args.out / "search_efficiency.json", {
        "load_average_at_start": load, "space": str(args.space), "data": str(args.data),
        "budget_epochs": args.epoch_budget, "time_cap_s": args.time_cap, "seeds": list(range(args.seeds)),
        "stop_grace_s": STOP_GRACE_S, **objective.to_record(),
        "settings": {"num_samples": NUM_SAMPLES, "max_epochs": settings.max_epochs,
                     "grace_period": settings.grace_period, "reduction_factor": settings.reduction_factor,
                     "asha_rungs": settings.asha_rungs(), "asha_epochs_per_config_estimate": per_config,
                     "asha_configs_expected": expected, "configs_goal": CONFIGS_GOAL},
        "methods": {m: {"label": METHODS[m].label, "warm_started": METHODS[m].warm,
                        "settings": METHODS[m].settings,
                        "random_startup_trials": specs[m].search.tpe_startup() if METHODS[m].model_based else None}
                    for m in args.methods},
        "warm_start": warm,
        "target": {"value": target, "source": source},
        "runs": runs, "failed": failed, "pending": pending, "summary": summary, "goals": checks,
        "seeds_can_show": spread_record | {"sentence": spread},
    })
    label_y = f"best {metric_label(runs[0]['metric'])} so far"
    partial = f"PARTIAL: {len(runs)} of {len(plan)} searches complete, {len(pending)} pending\n" if pending else ""
    plot(runs, args.methods, target, args.epoch_budget, args.out / "search_efficiency.png",
         f"{args.space.name}: {label_y}, {args.epoch_budget} equal-cost epochs per search, {args.seeds} seed(s) per "
         f"method\n{partial}(thin: one seed; thick: median while every seed has a point, dashed: warm-started; "
         f"dotted: target {target:.3f})")
    write_text_result(args.out / "search_efficiency.md", "\n".join([
        *(markdown_table(**table) for table in shown), *(f"- {line}" for line in findings)]) + "\n")
    print(f"wrote {args.out / 'search_efficiency.json'}, {args.out / 'search_efficiency.md'} and "
          f"{args.out / 'search_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
