"""ASHA replayed: what Tune's ASHA and promotion-based ASHA would make of an epoch budget, on recorded learning curves.

    python benchmarks/asha_replay.py     # after benchmarks/search_efficiency.py, from its random searches' curves

``search_efficiency.py`` found that Tune's ASHA (``AsyncHyperBandScheduler``) spends much of a search's budget on
the first trials to reach each rung, whatever their score: it stops a trial at a rung only when it is below the
cut-off of the results already recorded there, so the first arrival always goes on. Promotion-based ASHA (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", MLSys 2020, Algorithm 2) instead pauses every trial at its
rung and, whenever a worker is free, resumes the best paused trial that is in the top 1/reduction_factor of its
rung's results, or else starts a new configuration. Before building the second into the product (a Tune scheduler
of its own that pauses and resumes checkpointed trials), this replays both on the learning curves that the
benchmark's random searches recorded, to estimate what the change would buy at the same budget.

The pool is every trial of the benchmark's random searches (all seeds) that trained all ``max_epochs``: random draws
of the space, each with its validation score and its seconds per epoch at every epoch. One replicate resamples the
pool (a bootstrap, so that the pool's own luck shows in the spread), draws configurations from it in random order
and runs each policy on the same draws, with the benchmark's settings: rungs, reduction factor, ``max_epochs``, 2
trials at a time, the budget in epochs. Policies: ``random`` (every trial to ``max_epochs``: random search),
``tune-asha`` (Ray 2.60's ``_Bracket.on_result``: stop when below the ``1 - 1/rf`` percentile of the rung's
recorded results, then record) and ``promotion-asha``. Wall time comes from the recorded epoch seconds; resuming a
paused trial is taken to cost nothing (in Tune it restarts an actor and loads a checkpoint: a few seconds). The
replay validates itself against the real searches: its ``random`` and ``tune-asha`` rows stand beside the
benchmark's random search and random + ASHA. A second table replays both ASHA policies over a grid of grace periods
and reduction factors (rungs placed by ``SearchSettings.asha_rungs``), on the same draws: whether another setting
of the product's ASHA would spend the budget better.

What it cannot show: how TPE would steer either scheduler (only random draws are replayed), or configurations the
pool lacks (its best curve bounds every replicate's best; ``--pool random,kt-bayesian`` adds the KerasTuner
Bayesian searches' full-length trials for a larger, better-than-random pool). Writes ``OUT/asha_replay.json`` and
``OUT/asha_replay.md`` (``asha_replay-POOL.*`` for another pool). About a minute.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from automl.spec import SearchSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_OUT, RUNS, at_chance, fmt, markdown_table, print_table, read_search,  # noqa: E402
                     write_result, write_text_result)

POLICIES = ("random", "tune-asha", "promotion-asha")
ASHA_POLICIES = ("tune-asha", "promotion-asha")
#: ASHA's settings replayed beside the benchmark's (grace period x reduction factor, at the benchmark's max_epochs).
GRID_GRACE_PERIODS, GRID_REDUCTION_FACTORS = (1, 2, 3, 4), (2, 3, 4)
LABELS = {"random": "every trial to max_epochs (random search)", "tune-asha": "Tune's ASHA",
          "promotion-asha": "promotion-based ASHA"}
#: search_efficiency.py's method whose searches give the curves by default (random draws, each trained to
#: max_epochs), and the methods the replay's policies stand beside.
POOL_METHODS = ("random",)
REAL_METHOD = {"random": "random", "tune-asha": "random-asha"}
CONCURRENT_TRIALS = 2  # the benchmark's Ray methods: 2 trials of 1 CPU each


@dataclass(frozen=True)
class Curve:
    scores: tuple[float, ...]  # the objective at epochs 1..max_epochs
    seconds: tuple[float, ...]  # each epoch's seconds


@dataclass
class Trial:
    curve: Curve
    trial_id: int  # what Tune's bracket records a result under
    epochs: int = 0


@dataclass
class Settings:
    rungs: tuple[int, ...]  # epochs at which ASHA decides, below max_epochs
    reduction_factor: int
    max_epochs: int
    budget: int
    target: float


@dataclass
class Outcome:
    best: float = -math.inf
    configs: int = 0
    epochs_to_target: int | None = None
    seconds_to_target: float | None = None
    epochs_past_first_rung_at_chance: int = 0  # trained after the first rung by trials at chance there
    reached_last_rung: int = 0
    trace: list[float] = field(default_factory=list)  # best so far after each epoch


# --- the policies ----------------------------------------------------------------------------------------------

class Policy:
    """Which trial a free worker trains next, to which epoch, and whether a trial goes on after an epoch."""

    def __init__(self, settings: Settings, draws: Iterator[Curve]):
        self.settings, self.draws, self.trial_ids = settings, draws, itertools.count()

    def new_trial(self) -> Trial:
        return Trial(next(self.draws), next(self.trial_ids))

    def next_job(self) -> tuple[Trial, int]:
        """A trial and the epoch it trains to, unless ``goes_on`` stops it sooner."""
        return self.new_trial(), self.settings.max_epochs

    def goes_on(self, trial: Trial) -> bool:
        return True


class TuneASHA(Policy):
    """Ray Tune's ``ASHAScheduler`` with one bracket, by its own bookkeeping (``_Bracket``): at a rung, stop the
    trial if its score is below the ``1 - 1/rf`` percentile of the scores recorded there so far (none recorded: it
    goes on), then record it."""

    def __init__(self, settings: Settings, draws: Iterator[Curve]):
        from ray.tune.schedulers.async_hyperband import _Bracket

        super().__init__(settings, draws)
        self.bracket = _Bracket(min_t=settings.rungs[0], max_t=settings.max_epochs,
                                reduction_factor=settings.reduction_factor, s=0)

    def goes_on(self, trial: Trial) -> bool:
        from ray.tune.schedulers import TrialScheduler

        score = trial.curve.scores[trial.epochs - 1]
        return self.bracket.on_result(trial, trial.epochs, score) == TrialScheduler.CONTINUE


class PromotionASHA(Policy):
    """Li et al. 2020, Algorithm 2: a free worker resumes the best not-yet-promoted trial in the top
    floor(n / rf) of the highest rung that has one, else starts a new configuration; every trial pauses at its
    next rung (the last rung's promoted trials train to max_epochs).
    """

    def __init__(self, settings: Settings, draws: Iterator[Curve]):
        super().__init__(settings, draws)
        self.rung_trials: dict[int, list[Trial]] = {rung: [] for rung in settings.rungs}
        self.promoted: set[tuple[int, int]] = set()  # (rung, trial) that went on from that rung

    def next_job(self) -> tuple[Trial, int]:
        rungs = self.settings.rungs
        for k in reversed(range(len(rungs))):
            trials = sorted(self.rung_trials[rungs[k]], key=lambda t: t.curve.scores[rungs[k] - 1], reverse=True)
            top = trials[:len(trials) // self.settings.reduction_factor]
            waiting = [t for t in top if (rungs[k], id(t)) not in self.promoted]
            if waiting:
                self.promoted.add((rungs[k], id(waiting[0])))
                return waiting[0], rungs[k + 1] if k + 1 < len(rungs) else self.settings.max_epochs
        return self.new_trial(), rungs[0]

    def goes_on(self, trial: Trial) -> bool:
        if trial.epochs in self.rung_trials:
            self.rung_trials[trial.epochs].append(trial)
        return True


POLICY_CLASSES = {"random": Policy, "tune-asha": TuneASHA, "promotion-asha": PromotionASHA}


def replay(policy: Policy, settings: Settings) -> Outcome:
    """Run ``policy`` with CONCURRENT_TRIALS workers until ``settings.budget`` epochs have been trained."""
    out = Outcome()
    events: list[tuple[float, int, Trial, int]] = []  # (time the trial's next epoch ends, tie-break, trial, until)
    tie = itertools.count()

    def start(now: float) -> None:
        trial, until = policy.next_job()
        heapq.heappush(events, (now + trial.curve.seconds[trial.epochs], next(tie), trial, until))

    for _ in range(CONCURRENT_TRIALS):
        start(0.0)
    first_rung = settings.rungs[0]
    epochs = 0
    while epochs < settings.budget:
        now, _, trial, until = heapq.heappop(events)
        trial.epochs += 1
        epochs += 1
        out.configs += trial.epochs == 1  # as the benchmark counts: configurations with an epoch within the budget
        score = trial.curve.scores[trial.epochs - 1]
        out.best = max(out.best, score)
        out.trace.append(out.best)
        if out.epochs_to_target is None and out.best >= settings.target:
            out.epochs_to_target, out.seconds_to_target = epochs, now
        if trial.epochs > first_rung and at_chance(trial.curve.scores[first_rung - 1]):
            out.epochs_past_first_rung_at_chance += 1
        if trial.epochs == settings.rungs[-1]:
            out.reached_last_rung += 1
        if policy.goes_on(trial) and trial.epochs < until:
            heapq.heappush(events, (now + trial.curve.seconds[trial.epochs], next(tie), trial, until))
        elif epochs < settings.budget:
            start(now)
    return out


# --- the replicates ----------------------------------------------------------------------------------------------

def read_pool(out: Path, runs: list[dict], methods: list[str], metric: str,
              max_epochs: int) -> tuple[list[Curve], list[str]]:
    """Every trial of the benchmark's searches by ``methods`` that trained all ``max_epochs``, and the searches
    read."""
    curves, sources = [], []
    for run in runs:
        if run["method"] not in methods:
            continue
        run_dir = out / RUNS / Path(run["run_dir"]).name
        epochs = read_search(run_dir).epochs
        sources.append(run_dir.name)
        for _, rows in epochs.groupby("trial_id"):
            rows = rows.sort_values("epoch")
            if list(rows["epoch"]) == list(range(1, max_epochs + 1)):
                curves.append(Curve(tuple(rows[metric].astype(float)), tuple(rows["epoch_s"].astype(float))))
    return curves, sources


@dataclass(frozen=True)
class Arm:
    """One policy with one set of ASHA settings."""

    policy: str
    settings: Settings


def asha_settings(grace_period: int, reduction_factor: int, max_epochs: int, budget: int,
                  target: float) -> Settings:
    """The replay's settings, with the rungs where the product's ASHA places them (``SearchSettings.asha_rungs``)."""
    search = replace(SearchSettings(), grace_period=grace_period, reduction_factor=reduction_factor,
                     max_epochs=max_epochs)
    return Settings(rungs=tuple(r for r in search.asha_rungs() if r < max_epochs), reduction_factor=reduction_factor,
                    max_epochs=max_epochs, budget=budget, target=target)


def run_replicates(pool: list[Curve], arms: dict[str, Arm], budget: int, replicates: int,
                   seed: int) -> dict[str, list[Outcome]]:
    """Every arm on the same ``replicates`` draws (each from its own bootstrap of the pool)."""
    outcomes: dict[str, list[Outcome]] = {name: [] for name in arms}
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        resampled = [pool[i] for i in rng.integers(len(pool), size=len(pool))]
        # More draws than any policy can start within the budget (a trial trains at least an epoch).
        order = [resampled[i] for i in rng.integers(len(resampled), size=budget + CONCURRENT_TRIALS)]
        for name, arm in arms.items():
            outcomes[name].append(replay(POLICY_CLASSES[arm.policy](arm.settings, iter(order)), arm.settings))
    return outcomes


def summarise(outcomes: list[Outcome]) -> dict[str, float | None]:
    bests = np.array([o.best for o in outcomes])
    to_target = [o.epochs_to_target for o in outcomes if o.epochs_to_target is not None]
    seconds = [o.seconds_to_target for o in outcomes if o.seconds_to_target is not None]
    return {"best_mean": float(bests.mean()), "best_sd": float(bests.std(ddof=1)),
            "best_median": float(np.median(bests)),
            "reached_target": len(to_target) / len(outcomes),
            "epochs_to_target_median": float(np.median(to_target)) if to_target else None,
            "seconds_to_target_median": float(np.median(seconds)) if seconds else None,
            "configs_mean": float(np.mean([o.configs for o in outcomes])),
            "configs_min": int(min(o.configs for o in outcomes)),
            "reached_last_rung_mean": float(np.mean([o.reached_last_rung for o in outcomes])),
            "epochs_past_first_rung_at_chance_mean": float(np.mean([o.epochs_past_first_rung_at_chance
                                                                    for o in outcomes]))}


def paired(outcomes: dict[str, list[Outcome]], a: str, b: str) -> dict[str, float]:
    diff = np.array([x.best - y.best for x, y in zip(outcomes[a], outcomes[b])])
    return {"mean": float(diff.mean()), "p2_5": float(np.percentile(diff, 2.5)),
            "p97_5": float(np.percentile(diff, 97.5)), "share_ahead": float((diff > 0).mean()),
            "share_tied": float((diff == 0).mean()), "share_behind": float((diff < 0).mean())}


def real_searches(runs: list[dict], method: str) -> dict[str, float]:
    mine = [r for r in runs if r["method"] == method]
    bests = np.array([r["best_at_budget"] for r in mine])
    return {"seeds": len(mine), "best_mean": float(bests.mean()), "best_sd": float(bests.std(ddof=1)),
            "configs": [r["configs"] for r in mine]} if mine else {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="search_efficiency.py's output folder, where this writes too (default results/benchmarks)")
    parser.add_argument("--replicates", type=int, default=2000, help="replicates per policy (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling and the draws (default 0)")
    parser.add_argument("--pool", default=",".join(POOL_METHODS),
                        help="comma-separated search_efficiency methods whose full-length trials make the pool "
                             f"(default {','.join(POOL_METHODS)}: unbiased draws of the space; e.g. random,kt-bayesian "
                             "adds the Gaussian process's picks, better than random draws, to see how the ranking "
                             "holds on a larger pool); a pool other than the default writes asha_replay-POOL.*")
    args = parser.parse_args(argv)
    args.pool = [m.strip() for m in args.pool.split(",") if m.strip()]
    if args.replicates < 2:
        parser.error("--replicates must be at least 2")
    return args


def outcome_cells(s: dict[str, float | None]) -> list[str]:
    return [f"{fmt(s['best_mean'])} ± {fmt(s['best_sd'])}", f"{s['reached_target']:.0%}",
            fmt(s["epochs_to_target_median"], 0), f"{s['configs_mean']:.1f}"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = args.out / "search_efficiency.json"
    if not source.is_file():
        sys.exit(f"error: {source}: not found; run benchmarks/search_efficiency.py first (its random searches' "
                 "learning curves are the replay's pool)")
    efficiency = json.loads(source.read_text())
    runs, known = efficiency["runs"], efficiency["settings"]
    if efficiency["mode"] != "max":
        sys.exit(f"error: {source}: its metric {efficiency['metric']} is minimised; the replay ranks by the "
                 "largest score (a maximised metric such as val_balanced_accuracy)")
    max_epochs, budget, target = known["max_epochs"], efficiency["budget_epochs"], efficiency["target"]["value"]
    settings = asha_settings(known["grace_period"], known["reduction_factor"], max_epochs, budget, target)
    pool, sources = read_pool(args.out, runs, args.pool, efficiency["metric"], max_epochs)
    if len(pool) < 2:
        sys.exit(f"error: {source}: its searches by {', '.join(args.pool)} hold {len(pool)} trial(s) of "
                 f"{max_epochs} epochs; the replay needs at least 2")
    arms = {policy: Arm(policy, settings) for policy in POLICIES}
    grid = [(g, rf) for g in GRID_GRACE_PERIODS for rf in GRID_REDUCTION_FACTORS]
    for g, rf in grid:
        for policy in ASHA_POLICIES:
            arms.setdefault(f"{policy} g{g} rf{rf}", Arm(policy, asha_settings(g, rf, max_epochs, budget, target)))
    print(f"replaying {len(arms)} policies and settings x {args.replicates} replicates on {len(pool)} learning "
          f"curves from {', '.join(sources)}: budget {budget} epochs, the benchmark's rungs {list(settings.rungs)}, "
          f"reduction factor {settings.reduction_factor}, max {max_epochs} epochs, target {target:.3f}")
    outcomes = run_replicates(pool, arms, budget, args.replicates, args.seed)
    summary = {name: summarise(outcomes[name]) for name in arms}
    versus = {"promotion-asha vs tune-asha": paired(outcomes, "promotion-asha", "tune-asha"),
              "promotion-asha vs random": paired(outcomes, "promotion-asha", "random"),
              "tune-asha vs random": paired(outcomes, "tune-asha", "random")}
    real = {policy: real_searches(runs, method) for policy, method in REAL_METHOD.items()}
    pool_scores = np.array([max(c.scores) for c in pool])

    columns = ["policy", "best at budget (mean ± sd)", "median", "reached target", "epochs to target (median)",
               "seconds to target (median)", "configs (mean, min)", "trials at last rung",
               "epochs past rung 1 at chance", "real searches (mean ± sd, configs)"]
    rows = []
    for policy in POLICIES:
        s, r = summary[policy], real.get(policy, {})
        rows.append([LABELS[policy], f"{fmt(s['best_mean'])} ± {fmt(s['best_sd'])}", fmt(s["best_median"]),
                     f"{s['reached_target']:.0%}", fmt(s["epochs_to_target_median"], 0),
                     fmt(s["seconds_to_target_median"], 0), f"{s['configs_mean']:.1f}, {s['configs_min']}",
                     f"{s['reached_last_rung_mean']:.1f}", f"{s['epochs_past_first_rung_at_chance_mean']:.1f}",
                     f"{fmt(r['best_mean'])} ± {fmt(r['best_sd'])} ({r['seeds']} seeds; "
                     f"{', '.join(map(str, r['configs']))})" if r else "-"])
    caption = (f"{args.replicates} replicates; pool: {len(pool)} curves, best scores {fmt(pool_scores.min())}-"
               f"{fmt(pool_scores.max())} (median {fmt(float(np.median(pool_scores)))}); target {target:.3f}; "
               f"rungs {list(settings.rungs)}")
    title = f"ASHA replayed at {budget} equal-cost epochs, the benchmark's settings"
    print_table(title, columns, rows, caption=caption)
    vs_columns = ["comparison", "mean difference in best", "95% of replicates", "ahead", "tied", "behind"]
    vs_rows = [[name, f"{d['mean']:+.3f}", f"{d['p2_5']:+.3f} to {d['p97_5']:+.3f}", f"{d['share_ahead']:.0%}",
                f"{d['share_tied']:.0%}", f"{d['share_behind']:.0%}"] for name, d in versus.items()]
    vs_title = "Paired, on the same draws"
    print_table(vs_title, vs_columns, vs_rows)
    grid_columns = ["grace period", "reduction factor", "rungs",
                    *(f"{LABELS[policy]}: {what}" for policy in ASHA_POLICIES
                      for what in ("best (mean ± sd)", "reached target", "epochs to target", "configs"))]
    grid_rows = [[g, rf, ", ".join(map(str, arms[f"{ASHA_POLICIES[0]} g{g} rf{rf}"].settings.rungs)),
                  *(cell for policy in ASHA_POLICIES for cell in outcome_cells(summary[f"{policy} g{g} rf{rf}"]))]
                 for g, rf in grid]
    grid_title = f"ASHA's settings replayed at {budget} epochs, max {max_epochs} per trial (same draws)"
    print_table(grid_title, grid_columns, grid_rows, left=["rungs"])

    name = "asha_replay" if tuple(args.pool) == POOL_METHODS else f"asha_replay-{'+'.join(args.pool)}"
    write_result(args.out / f"{name}.json", {
        "source": str(source), "pool": {"methods": args.pool, "searches": sources, "curves": len(pool),
                                        "best_scores": sorted(map(float, pool_scores))},
        "settings": vars(settings) | {"rungs": list(settings.rungs), "concurrent_trials": CONCURRENT_TRIALS},
        "replicates": args.replicates, "seed": args.seed,
        "summary": {policy: summary[policy] for policy in POLICIES}, "paired": versus, "real_searches": real,
        "grid": [{"grace_period": g, "reduction_factor": rf, "rungs": list(arms[f"{ASHA_POLICIES[0]} g{g} rf{rf}"]
                                                                          .settings.rungs)}
                 | {policy: summary[f"{policy} g{g} rf{rf}"] for policy in ASHA_POLICIES} for g, rf in grid],
        "mean_trace": {policy: np.mean([o.trace for o in outcomes[policy]], axis=0).round(4).tolist()
                       for policy in POLICIES}})
    write_text_result(args.out / f"{name}.md",
                      markdown_table(columns, rows, title=title, caption=caption) + "\n"
                      + markdown_table(vs_columns, vs_rows, title=vs_title) + "\n"
                      + markdown_table(grid_columns, grid_rows, title=grid_title, left=["rungs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
