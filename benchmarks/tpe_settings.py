"""TPE settings: start-up trials, independent / multivariate / grouped densities and the constant liar, measured.

    python benchmarks/tpe_settings.py                      # about 2-3 CPU minutes, niced
    python benchmarks/tpe_settings.py --seeds 3 --budgets 40   # a smoke test

No training: the searchers the Ray engine runs (``automl.search._searchers.searcher``: Optuna TPE behind Tune's
concurrency limit, infeasible draws rejected and told) are driven directly, each trial's result a synthetic
objective over ``automl/search_spaces/ham10000_cnn.yaml`` at 28 px:

- an additive part fitted (ridge) to the 38 trials of ``results/ham10000_cnn_40``: each trial's validation balanced
  accuracy after 2 epochs (every trial ran at least 2, so the scores share a budget), on one-hot choices and scaled
  numbers;
- two interactions a fit on 38 points cannot show, so that joint (multivariate) densities have something to find:
  the learning rate's optimum depends on the optimizer (about 2.5e-3 for SGD, 6e-4 for Adam and its kin, 2.5e-4
  for RMSprop), and batch norm helps deeper trunks;
- Gaussian noise (sd 0.02, about what one training seed changes) on what the searcher sees; the score of a search is
  the noiseless value of the trial it found best.

Trials last 0.5 to 1.5 time units (uniform), ``max_concurrent`` of them at once (2, the default; 8 for the constant
liar), so that results arrive out of order as they do on Ray. Compared, for ``num_samples`` 20, 40 and 100 and 10
seeds each: start-up trials 10 (Optuna's default), max(5, n // 5) and max(5, n // 10); independent, multivariate and
grouped TPE; constant liar on and off; infeasible draws told as
failed trials (which TPE ignores) and told as the engine does but with Optuna's own split of good and bad trials
(:class:`automl.search._searchers.FeasibleGamma` explains the difference), at 2 and 16 trials at once; random search
as the floor. Prints a table and writes
``OUT/tpe_settings.json``; the defaults in ``automl/spec.py`` cite it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, REPO, print_table, write_result

from automl.layout import RunLayout
from automl.spec import Spec, load_spec, search_overrides

SPACE = REPO / "automl" / "search_spaces" / "ham10000_cnn.yaml"
FITTED_RUN = REPO / "results" / "ham10000_cnn_40"
IMAGE_SIZE = (28, 28)
NOISE_SD = 0.02
#: The learning rate (log10) each optimizer does best with, in the synthetic objective's interaction.
BEST_LOG_LR = {"sgd": -2.6, "adam": -3.2, "nadam": -3.2, "adamax": -3.2, "rmsprop": -3.6}


class Objective:
    """The synthetic objective: a ridge fit to a real search's 2-epoch scores, two interactions, and noise."""

    def __init__(self, spec: Spec, run_dir: Path):
        from sklearn.linear_model import Ridge

        self.dims = [d for d in spec.space.searched]
        run = RunLayout(run_dir)
        trials, epochs = run.read_trials(), run.read_epochs()
        early = epochs[epochs["epoch"] <= 2].groupby("trial_id")["val_balanced_accuracy"].max()
        rows = [(self.features(_params(row)), early[row["trial_id"]]) for row in trials.to_dict("records")
                if row["trial_id"] in early.index]
        x, y = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        self.fit = Ridge(alpha=1.0).fit(x, y)
        self.fitted_on = len(rows)
        self.r2 = float(self.fit.score(x, y))

    def features(self, params: dict) -> list[float]:
        out: list[float] = []
        for d in self.dims:
            value = params.get(d.name)
            if d.kind == "choice":
                out += [float(value == v) for v in d.values]
            elif value is None:
                out.append(0.0)  # a conditional dimension that does not exist here
            else:
                low, high, value = (np.log(d.low), np.log(d.high), np.log(value)) if d.log else (d.low, d.high, value)
                out.append((value - low) / (high - low))
        return out

    def __call__(self, params: dict) -> float:
        value = float(self.fit.predict([self.features(params)])[0])
        value -= 0.05 * (math.log10(params["learning_rate"]) - BEST_LOG_LR[params["optimizer"]]) ** 2
        value += (0.03 if params["batch_norm"] else -0.03) * (params["conv_blocks"] - 2)
        return value


def _params(row: dict) -> dict:
    return {k.removeprefix("hp_"): v for k, v in row.items() if k.startswith("hp_") and v == v and v is not None}


def build_searcher(spec: Spec, told: str):
    """The engine's searcher (``told`` = ``product``), or for comparison one that tells Optuna its infeasible draws
    as failed trials (``fail``: TPE ignores them), or tells them as the engine does but splits good from bad over
    every finished trial (``all``: Optuna's own gamma, infeasible draws counted)."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from automl.search._feasible import Rejections
    from automl.search._searchers import FeasibleOptunaSearch, searcher, tpe_sampler

    if told == "product":
        return searcher(spec, IMAGE_SIZE, None)
    import optuna

    class TellsFail(FeasibleOptunaSearch):
        def suggest(self, trial_id: str):
            def tell(error) -> None:
                self._ot_study.tell(self._ot_trials.pop(trial_id), state=optuna.trial.TrialState.FAIL)

            return self.rejections.draw(lambda: OptunaSearch.suggest(self, trial_id), tell)

    rejections = Rejections(spec.space, IMAGE_SIZE, "benchmark")
    sampler = tpe_sampler(spec.search, rejections)
    sampler._gamma = None  # Optuna's default, over every finished trial (benchmark only: a private attribute)
    kind = TellsFail if told == "fail" else FeasibleOptunaSearch
    found = kind(rejections=rejections, worst=spec.objective.worst, space=spec.space.optuna_define_by_run(),
                 metric=spec.objective.name, mode=spec.objective.direction, sampler=sampler, study_name="benchmark")
    return ConcurrencyLimiter(found, max_concurrent=spec.search.max_concurrent)


def simulate(spec: Spec, objective: Objective, seed: int, concurrency: int, told: str) -> dict:
    """One search: its best trial's noiseless value, the draws it rejected, and the driver's seconds per trial."""
    from ray.tune.search import Searcher

    from automl.errors import UserError

    spec = spec.with_overrides(search_overrides({"seed": seed, "max_concurrent": concurrency}))
    alg = build_searcher(spec, told)
    rng = np.random.default_rng(1000 + seed)
    metric = spec.objective.name
    running: list[tuple[float, str, float]] = []  # (finishes at, trial id, noiseless value)
    now, started, best_seen, best_true, suggested = 0.0, time.process_time(), -math.inf, math.nan, 0
    while suggested < spec.search.num_samples or running:
        while suggested < spec.search.num_samples and len(running) < concurrency:
            trial_id = f"t{suggested}"
            try:
                config = alg.suggest(trial_id)
            except UserError:  # MAX_REDRAWS infeasible draws in a row: the search would stop here
                return {"best": best_true, "rejected": alg.searcher.rejections.count, "stopped_at": suggested,
                        "cpu_ms_per_trial": 1000 * (time.process_time() - started) / max(1, suggested)}
            assert config not in (None, Searcher.FINISHED)
            true = objective(spec.space.active(config))
            running.append((now + rng.uniform(0.5, 1.5), trial_id, true))
            suggested += 1
        running.sort()
        now, trial_id, true = running.pop(0)
        seen = true + rng.normal(0.0, NOISE_SD)
        alg.on_trial_complete(trial_id, {metric: seen})
        if seen > best_seen:
            best_seen, best_true = seen, true
    return {"best": best_true, "rejected": alg.searcher.rejections.count,
            "cpu_ms_per_trial": 1000 * (time.process_time() - started) / spec.search.num_samples}


def variants(n: int) -> dict[str, tuple[dict, int, str]]:
    """name -> (search overrides, trials at once, how infeasible draws are told); each TPE variant is the defaults
    but for what it names."""
    return {
        "random": ({"searcher": "random"}, 2, "product"),
        "startup 10 (Optuna's default)": ({"tpe_startup_trials": 10}, 2, "product"),
        "startup max(5, n//5)": ({"tpe_startup_trials": max(5, n // 5)}, 2, "product"),
        "startup max(5, n//10)": ({"tpe_startup_trials": max(5, n // 10)}, 2, "product"),
        "independent": ({"tpe_sampling": "independent"}, 2, "product"),
        "multivariate": ({"tpe_sampling": "multivariate"}, 2, "product"),
        "grouped": ({"tpe_sampling": "grouped"}, 2, "product"),
        "liar on, 2 at once": ({"tpe_constant_liar": True}, 2, "product"),
        "liar off, 2 at once": ({"tpe_constant_liar": False}, 2, "product"),
        "liar on, 8 at once": ({"tpe_constant_liar": True}, 8, "product"),
        "liar off, 8 at once": ({"tpe_constant_liar": False}, 8, "product"),
        "infeasible told as FAIL": ({}, 2, "fail"),
        "infeasible told, gamma over all": ({}, 2, "all"),
        "defaults, 16 at once": ({}, 16, "product"),
        "infeasible told, gamma over all, 16 at once": ({}, 16, "all"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="20,40,100", help="num_samples values, comma-separated")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    os.nice(10)  # a measurement beside other work: it may take longer, its numbers do not change
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    base = load_spec(SPACE)
    objective = Objective(base, FITTED_RUN)
    budgets = [int(b) for b in args.budgets.split(",")]
    results: dict[str, dict[str, dict]] = {}
    started = time.monotonic()
    for n in budgets:
        for name, (overrides, concurrency, told) in variants(n).items():
            spec = base.with_overrides(search_overrides({"num_samples": n} | overrides))
            runs = [simulate(spec, objective, seed, concurrency, told) for seed in range(args.seeds)]
            best = np.array([r["best"] for r in runs])
            results.setdefault(name, {})[str(n)] = {
                "settings": {"startup": spec.search.tpe_startup(), "sampling": spec.search.tpe_sampling,
                             "constant_liar": spec.search.tpe_constant_liar, "max_concurrent": concurrency,
                             "searcher": spec.search.searcher, "infeasible_told": told},
                "best_mean": float(best.mean()), "best_sd": float(best.std(ddof=1)) if len(best) > 1 else 0.0,
                "rejected_mean": float(np.mean([r["rejected"] for r in runs])),
                "stopped": [r["stopped_at"] for r in runs if "stopped_at" in r],
                "cpu_ms_per_trial": float(np.mean([r["cpu_ms_per_trial"] for r in runs])),
                "best": best.tolist()}
            print(f"n={n:<4} {name:<30} best {best.mean():.4f} ± {best.std(ddof=1) if len(best) > 1 else 0:.4f}  "
                  f"rejected {results[name][str(n)]['rejected_mean']:.1f}  ({time.monotonic() - started:.0f} s)",
                  flush=True)
    rows = [(name, *[f"{by_n[str(n)]['best_mean']:.3f} ± {by_n[str(n)]['best_sd'] / math.sqrt(args.seeds):.3f}"
                     f" ({by_n[str(n)]['rejected_mean']:.0f})" for n in budgets])
            for name, by_n in results.items()]
    print_table(f"best trial's noiseless objective, mean ± standard error over {args.seeds} seeds (draws rejected)",
                ["variant", *[f"n={n}" for n in budgets]], rows,
                caption=f"synthetic objective: ridge fit to {objective.fitted_on} trials (R² {objective.r2:.2f}) "
                        f"+ 2 interactions + noise sd {NOISE_SD}; the rest of each variant is the defaults")
    write_result(args.out / "tpe_settings.json", {
        "space": str(SPACE.relative_to(REPO)), "image_size": list(IMAGE_SIZE), "seeds": args.seeds,
        "budgets": budgets, "noise_sd": NOISE_SD, "fitted_on_trials": objective.fitted_on, "fit_r2": objective.r2,
        "seconds": round(time.monotonic() - started, 1), "cpu_seconds": round(time.process_time(), 1),
        "results": results})
    print(f"wrote {args.out / 'tpe_settings.json'}")


if __name__ == "__main__":
    main()
