"""Search efficiency: six search methods on the same space with the same wall-clock budget, several seeds each.

    python benchmarks/search_efficiency.py                       # the full run: 6 methods x 3 seeds x 360 s, about 2 h
    python benchmarks/search_efficiency.py --budget 40 --seeds 1 --methods random,optuna-asha,kt-hyperband \\
        --space search_spaces/quick.yaml --out /tmp/bench-smoke  # a smoke test, about 3 min

Methods (``--methods``): ``random`` and ``random-asha`` (Ray Tune random search without and with ASHA),
``optuna`` and ``optuna-asha`` (Optuna TPE without and with ASHA), ``kt-hyperband`` and ``kt-bayesian``
(KerasTuner's Hyperband and BayesianOptimization, ``engine: keras-tuner``). Every search is a real
``automl search`` of the space (default ``search_spaces/ham10000_cnn.yaml`` with its max_epochs,
grace period and reduction factor) in its own process, with ``time_budget_s`` = ``--budget`` and
num_samples 1000 so that the budget is what ends it. Ray methods run 2 trials at a time with 1 CPU
each; KerasTuner runs one trial at a time in the search's process, TensorFlow using both cores.
The searcher seed (which also seeds every trial's weights) is 0..N-1; the data split is fixed.

Measured per method and seed, counting only epochs recorded within the budget (KerasTuner checks
its budget between trials, so it can overrun; it is stopped a minute after the budget):
best validation balanced accuracy at the budget; time and epochs to reach the target (by default
the median of random search's bests at the budget), where epochs are summed over all the search's
trials in the order they were recorded; trials evaluated (and distinct configurations, since a
Hyperband trial that continues an earlier one is a new trial). Times count from the moment the
search began (``run.json``'s ``started``: data loaded, Ray started), so Ray's worker start-up is
charged to Ray. Goal check: Optuna + ASHA reaches the target in at most a third of the epochs random
search needs, and ends ahead of both KerasTuner tuners.

Each search lands in ``OUT/runs/METHOD-seedK/`` (a results store; checkpoints are deleted). A
search already complete there with the same spec is reused, so an interrupted benchmark continues
where it stopped; ``--fresh`` runs everything again. Writes ``OUT/search_efficiency.json`` (budgets,
seeds, machine, every run's numbers and curve, the summary) and ``OUT/search_efficiency.png``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    REPO,
    RUNS,
    check_idle,
    fmt,
    mark_complete,
    print_table,
    read_search,
    reusable,
    run_search_process,
    save_figure,
    write_result,
)

from automl import console
from automl.errors import UserError
from automl.layout import hyperparameter_columns
from automl.objective import Objective
from automl.spec import Spec, load_spec, search_overrides

# name: (label, search settings). Ray methods: 2 concurrent trials of 1 CPU, the machine's 2 cores.
RAY = {"engine": "ray", "max_concurrent": 2, "cpu": 1}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random search", RAY | {"searcher": "random", "scheduler": "none"}),
    "random-asha": ("random + ASHA", RAY | {"searcher": "random", "scheduler": "asha"}),
    "optuna": ("Optuna TPE", RAY | {"searcher": "optuna", "scheduler": "none"}),
    "optuna-asha": ("Optuna TPE + ASHA", RAY | {"searcher": "optuna", "scheduler": "asha"}),
    "kt-hyperband": ("KerasTuner Hyperband", {"engine": "keras-tuner", "keras_tuner": "hyperband"}),
    "kt-bayesian": ("KerasTuner Bayesian", {"engine": "keras-tuner", "keras_tuner": "bayesian"}),
}
COLORS = {"random": "tab:gray", "random-asha": "tab:olive", "optuna": "tab:cyan", "optuna-asha": "tab:blue",
          "kt-hyperband": "tab:red", "kt-bayesian": "tab:orange"}
NUM_SAMPLES = 1000  # far more than fit in any budget: the time budget ends every search
STOP_GRACE_S = 60  # past the budget before a search still running (a KerasTuner trial) is stopped
START_OVERHEAD_S = 35  # per search, outside its budget: Python + TensorFlow import, data, Ray start and stop
EPOCHS_GOAL = 1 / 3  # Optuna + ASHA's epochs to the target, as a fraction of random search's


def metric_label(metric: str) -> str:
    """``val_balanced_accuracy`` -> ``validation balanced accuracy``."""
    return "validation " + metric.removeprefix("val_").replace("_", " ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=360,
                        help="wall-clock seconds per method and seed (default 360)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method: 0..N-1 (default 3)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="HAM10000 folder (default ../shared/data/ham10000_28)")
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "ham10000_cnn.yaml",
                        help="search spec (default search_spaces/ham10000_cnn.yaml)")
    parser.add_argument("--max-epochs", type=int,
                        help="epochs per trial at most (default: the space's search.max_epochs)")
    parser.add_argument("--target", type=float,
                        help="target value (default: median of random search's bests at the budget)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/benchmarks)")
    parser.add_argument("--fresh", action="store_true", help="delete and redo searches already complete in OUT/runs")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.budget < 10:
        parser.error("--seeds must be at least 1 and --budget at least 10 seconds")
    return args


def method_spec(base: Spec, method: str, seed: int, budget: float, max_epochs: int | None) -> Spec:
    """The space's spec with one method's search settings, the budget and the seed."""
    # No portfolio: every method starts from nothing, so that the comparison is of the methods alone.
    settings = METHODS[method][1] | {"num_samples": NUM_SAMPLES, "time_budget_s": budget, "seed": seed,
                                     "max_epochs": max_epochs, "portfolio": "none"}
    return base.with_overrides(search_overrides(settings))


def run_method(args: argparse.Namespace, base: Spec, method: str, seed: int) -> dict[str, Any] | None:
    """Run (or reuse) one method-seed search and measure it; None if the search failed."""
    spec = method_spec(base, method, seed, args.budget, args.max_epochs)
    run_dir = args.out / RUNS / f"{method}-seed{seed}"
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    reused = reusable(run_dir, spec, args.data.resolve())
    if not reused:
        console.info(f"running {method} seed {seed} ({args.budget:.0f} s budget; log: {run_dir / 'search.log'})")
        outcome = run_search_process(spec, args.data.resolve(), run_dir, stop_after_s=args.budget + STOP_GRACE_S)
        if not mark_complete(outcome, budget_s=args.budget, method=method, seed=seed):
            return None
    return measure(run_dir, args.budget, spec.objective) | {"method": method, "seed": seed, "reused": reused}


def last_line(log: Path) -> str:
    """The last non-empty line of a search's log: its error, when it failed."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def measure(run_dir: Path, budget: float, objective: Objective) -> dict[str, Any]:
    """Best-so-far curve and counts of one search, from the epochs recorded within the budget."""
    search = read_search(run_dir)
    metric = objective.name
    epochs = search.epochs[search.epochs["t"] <= budget] if not search.epochs.empty else search.epochs
    values = epochs[metric].to_numpy(dtype=float) if not epochs.empty else np.array([])
    best = objective.running_best(pd.Series(values)).to_numpy() if len(values) else values
    ids = set(epochs["trial_id"]) if not epochs.empty else set()
    trials = search.trials
    in_budget = trials[trials["trial_id"].isin(ids)] if not trials.empty else trials
    hp_columns = hyperparameter_columns(trials)
    errored = 0
    if {"started_at", "status"} <= set(trials.columns):
        late = trials["started_at"] - search.started > budget
        errored = int(((trials["status"] == "errored") & ~late).sum())
    benchmark = search.info.get("benchmark", {})
    return {
        "run_dir": str(run_dir),
        "metric": metric,
        "best_at_budget": float(best[-1]) if len(best) else math.nan,
        "epochs_at_budget": len(best),
        "trials": len(ids),
        "configs": len(in_budget[hp_columns].astype(str).drop_duplicates()) if hp_columns else len(ids),
        "errored": errored,
        "epochs_after_budget": len(search.epochs) - len(epochs),
        "search_seconds": benchmark.get("seconds"),
        "stopped_after_budget": benchmark.get("stopped_after_budget"),
        # One point per epoch within the budget: [seconds since the search began, best so far];
        # the i-th point is cumulative epoch i + 1.
        "curve": [[round(float(t), 2), float(b)] for t, b in zip(epochs["t"], best, strict=True)] if len(best) else [],
    }


def reach(run: dict[str, Any], target: float, objective: Objective) -> None:
    """Add time and epochs to the target (None: not reached within the budget)."""
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
                f"median of random search's bests at the budget over {len(random_bests)} seeds")
    bests = [r["best_at_budget"] for r in runs if not math.isnan(r["best_at_budget"])]
    if not bests:
        return math.nan, "undefined: no search recorded an epoch within the budget"
    return float(np.median(bests)), "median of all searches' bests at the budget (random search has none)"


def median_or_none(values: list[float | None]) -> float | None:
    """Median over seeds counting 'not reached' (None) as infinitely late; None when the median seed did not reach."""
    if not values:
        return None
    median = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(median) else median


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method, over its seeds: the best at the budget (mean, sd, range), medians to the target, mean counts."""
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        bests = np.array([r["best_at_budget"] for r in mine], dtype=float)
        summary[method] = {
            "label": METHODS[method][0],
            "seeds": len(mine),
            "best_mean": float(np.nanmean(bests)) if len(mine) else None,
            "best_sd": float(np.nanstd(bests, ddof=1)) if len(mine) > 1 else 0.0 if mine else None,
            "best_min": float(np.nanmin(bests)) if len(mine) else None,
            "best_max": float(np.nanmax(bests)) if len(mine) else None,
            "time_to_target_s_median": median_or_none([r["time_to_target_s"] for r in mine]),
            "epochs_to_target_median": median_or_none([r["epochs_to_target"] for r in mine]),
            "reached": sum(r["epochs_to_target"] is not None for r in mine),
            "epochs_at_budget_mean": float(np.mean([r["epochs_at_budget"] for r in mine])) if mine else None,
            "trials_mean": float(np.mean([r["trials"] for r in mine])) if mine else None,
            "configs_mean": float(np.mean([r["configs"] for r in mine])) if mine else None,
        }
    return summary


def goals(summary: dict[str, dict[str, Any]], objective: Objective) -> dict[str, Any]:
    """The issue's two goals for Optuna + ASHA, each with a sentence saying whether it is met."""
    out: dict[str, Any] = {}
    ours, random = summary.get("optuna-asha"), summary.get("random")
    if ours and random and ours["seeds"] and random["seeds"]:
        mine, theirs = ours["epochs_to_target_median"], random["epochs_to_target_median"]
        ratio = mine / theirs if mine is not None and theirs else None
        met = ratio is not None and ratio <= EPOCHS_GOAL
        why = (f"{mine:.0f} / {theirs:.0f} epochs = {ratio:.2f}" if ratio is not None
               else "Optuna + ASHA's median seed did not reach the target" if mine is None
               else "random search's median seed did not reach the target")
        out["epochs_ratio"] = ratio
        out["epochs_goal_met"] = met
        out["epochs_sentence"] = (f"epochs to target, Optuna + ASHA / random search: {why} "
                                  f"(goal <= {EPOCHS_GOAL:.2f}): {'goal met' if met else 'goal not met'}")
    rivals = {m: s["best_mean"] for m, s in summary.items() if m.startswith("kt-") and s["seeds"]}
    if ours and ours["seeds"] and rivals:
        met = all(objective.better(ours["best_mean"], v) for v in rivals.values())
        shown = ", ".join(f"{summary[m]['label']} {v:.3f}" for m, v in rivals.items())
        out["ahead_of_keras_tuner"] = met
        out["keras_tuner_sentence"] = (f"best at the budget, mean over seeds: Optuna + ASHA {ours['best_mean']:.3f} "
                                       f"vs {shown}: {'goal met' if met else 'goal not met'}")
    return out


def print_summary(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], target: float, source: str,
                  budget: float) -> None:
    """The summary table: one row per method, per-seed values in brackets."""
    def per_seed(method: str, key: str, digits: int) -> str:
        mine = [r for r in runs if r["method"] == method]
        values = ", ".join("-" if r[key] is None else f"{r[key]:.{digits}f}" for r in mine)
        return f"{fmt(summary[method][f'{key}_median'], digits, 'not reached')} ({values})" if mine else "-"

    rows = []
    for method, s in summary.items():
        spread = f"{fmt(s['best_min'])}-{fmt(s['best_max'])}" if s["seeds"] else "-"
        best = f"{fmt(s['best_mean'])} ± {fmt(s['best_sd'])}" if s["seeds"] else "-"
        rows.append([s["label"], s["seeds"], best, spread,
                     per_seed(method, "time_to_target_s", 0), per_seed(method, "epochs_to_target", 0),
                     f"{s['reached']}/{s['seeds']}", fmt(s["epochs_at_budget_mean"], 1), fmt(s["trials_mean"], 1),
                     fmt(s["configs_mean"], 1)])
    print_table(
        f"Search efficiency at {budget:.0f} s per search: {metric_label(runs[0]['metric'])} (target {target:.3f})",
        ["method", "seeds", "best (mean ± sd)", "min-max", "time to target s", "epochs to target", "reached",
         "epochs", "trials", "configs"],
        rows,
        caption=f"best: at the budget. target = {target:.3f}, the {source}. Time and epochs to target: median over "
                "seeds (each seed in brackets, '-' = not reached within the budget); epochs are summed over all of a "
                "search's trials in recorded order. epochs, trials, configs (distinct hyperparameter sets): mean per "
                "search within the budget.",
    )


def plot(runs: list[dict[str, Any]], methods: list[str], target: float, budget: float, path: Path, title: str) -> None:
    """Best-so-far versus wall time and versus cumulative epochs: a thin line per seed, the median thick."""
    import matplotlib.pyplot as plt

    label_y = f"best {metric_label(runs[0]['metric'])} so far"
    fig, (by_time, by_epochs) = plt.subplots(1, 2, figsize=(14, 6), sharey=True, layout="constrained")
    for method in methods:
        curves = [np.array(r["curve"]) for r in runs if r["method"] == method and r["curve"]]
        if not curves:
            continue
        color, label = COLORS[method], METHODS[method][0]
        for curve in curves:
            by_time.step(curve[:, 0], curve[:, 1], where="post", color=color, lw=0.8, alpha=0.35)
            by_epochs.step(np.arange(1, len(curve) + 1), curve[:, 1], where="post", color=color, lw=0.8, alpha=0.35)
        times = np.linspace(0, budget, 721)
        by_time.plot(times, np.median([step_at(c[:, 0], c[:, 1], times) for c in curves], axis=0), color=color, lw=2.5,
                     label=f"{label} (median of {len(curves)})")
        counts = np.arange(1, max(len(c) for c in curves) + 1)
        stepped = [step_at(np.arange(1, len(c) + 1), c[:, 1], counts, end=len(c)) for c in curves]
        by_epochs.plot(counts, np.median(stepped, axis=0), color=color, lw=2.5, drawstyle="steps-post")
    for ax in (by_time, by_epochs):
        ax.axhline(target, color="black", ls=":", lw=1)
        ax.grid(alpha=0.3)
    by_time.axvline(budget, color="black", lw=0.8)
    by_time.text(0, target, " target", va="bottom", ha="left", fontsize=8)
    by_time.set(xlabel="wall time since the search began (s)", ylabel=label_y, xlim=(0, budget * 1.02))
    by_epochs.set(xlabel="epochs trained, summed over the search's trials", xlim=(0, None))
    fig.legend(loc="outside lower center", ncol=3, fontsize=9)
    fig.suptitle(title, fontsize=10)
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
        specs = {m: method_spec(base, m, 0, args.budget, args.max_epochs) for m in args.methods}  # validated up front
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load = check_idle()
    plan = [(method, seed) for seed in range(args.seeds) for method in args.methods]
    settings = specs[args.methods[0]].search
    console.info(
        f"{len(plan)} searches of {args.budget:.0f} s ({len(args.methods)} methods x {args.seeds} seeds) on "
        f"{args.space.name}, max {settings.max_epochs} epochs per trial; about "
        f"{len(plan) * (args.budget + START_OVERHEAD_S + 10) / 60:.0f} min if none can be reused"
    )
    runs, failed = [], []
    # Seed-major order: an interrupted benchmark has every method at the first seeds, and drifts in the
    # machine's load spread over all methods alike.
    for i, (method, seed) in enumerate(plan, start=1):
        try:
            run = run_method(args, base, method, seed)
        except KeyboardInterrupt:
            print(f"interrupted at {method} seed {seed}; run the same command again to continue (complete searches "
                  "are reused)", file=sys.stderr)
            return 130
        if run is None:
            log = args.out / RUNS / f"{method}-seed{seed}" / "search.log"
            failed.append({"method": method, "seed": seed, "log": str(log), "last_line": last_line(log)})
            print(f"[{i:>2}/{len(plan)}] {method:<13} seed {seed}: the search failed: {failed[-1]['last_line']} "
                  f"(log: {log})", flush=True)
            continue
        runs.append(run)
        took = "reused" if run["reused"] else f"search took {run['search_seconds']:.0f} s"
        print(f"[{i:>2}/{len(plan)}] {method:<13} seed {seed}: best {fmt(run['best_at_budget'])} at "
              f"{args.budget:.0f} s, {run['trials']} trials ({run['configs']} configs, {run['errored']} errored), "
              f"{run['epochs_at_budget']} epochs ({took})", flush=True)
    if not runs:
        print("no search completed; nothing to report", file=sys.stderr)
        return 1
    objective = specs[args.methods[0]].objective
    target, source = choose_target(runs, args.target)
    for run in runs:
        reach(run, target, objective)
    summary = summarise(runs, args.methods)
    checks = goals(summary, objective)
    print_summary(summary, runs, target, source, args.budget)
    for key in ("epochs_sentence", "keras_tuner_sentence"):
        if key in checks:
            print(checks[key])
    if failed:
        print(f"{len(failed)} search(es) failed and are left out: "
              + ", ".join(f"{f['method']} seed {f['seed']}" for f in failed))
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / "search_efficiency.json", {
        "load_average_at_start": load, "space": str(args.space), "data": str(args.data), "budget_s": args.budget,
        "seeds": list(range(args.seeds)),
        "stop_grace_s": STOP_GRACE_S, **objective.to_record(),
        "settings": {"num_samples": NUM_SAMPLES, "max_epochs": settings.max_epochs,
                     "grace_period": settings.grace_period, "reduction_factor": settings.reduction_factor},
        "methods": {m: {"label": METHODS[m][0], "settings": METHODS[m][1]} for m in args.methods},
        "target": {"value": target, "source": source},
        "runs": runs, "failed": failed, "summary": summary, "goals": checks,
    })
    label_y = f"best {metric_label(runs[0]['metric'])} so far"
    plot(runs, args.methods, target, args.budget, args.out / "search_efficiency.png",
         f"{args.space.name}: {label_y}, {args.budget:.0f} s per search, {args.seeds} seed(s) per method "
         f"(thin: one seed; thick: median while every seed has a point; dotted: target {target:.3f})")
    print(f"wrote {args.out / 'search_efficiency.json'} and {args.out / 'search_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
