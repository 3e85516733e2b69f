"""The Ray Tune engine's searchers: random search and Optuna TPE, each drawing only candidates that fit the image size.

No TensorFlow here: benchmarks drive these searchers without training (benchmarks/tpe_settings.py).
"""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Domain

from automl.errors import SpecError
from automl.layout import RunLayout
from automl.search._feasible import INVALID, Rejections, reason
from automl.space import SearchSpace
from automl.spec import SearchSettings, Spec

if TYPE_CHECKING:
    from automl.search._warm import WarmStart


def searcher(spec: Spec, image_size: tuple[int, int], run_dir: Path | None, warm: WarmStart | None = None):
    """The spec's searcher (random, or Optuna TPE with its study in ``optuna.db``), drawing only candidates that
    fit ``image_size``, behind Tune's limit on concurrent trials. ``run_dir`` None records nothing (benchmarks, the
    probe of a space): the rejected draws are not written to ``run.json``, and the study lives in memory.
    ``warm`` (:mod:`automl.search._warm`): results to tell Optuna, and configurations to draw first.
    """
    from ray.tune.search import ConcurrencyLimiter

    settings = spec.search
    rejections = Rejections(spec.space, image_size, f"{spec.source or 'spec'}: hyperparameters", run_dir)
    if settings.searcher == "random":
        found: Searcher = FeasibleRandomSearch(spec.space, rejections, settings.seed, metric=spec.objective.name,
                                               mode=spec.objective.direction,
                                               first=[configuration for configuration, _ in warm.enqueued] if warm
                                               else [])
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_storage = None
        if run_dir is not None:
            # The study lives in the run folder: `optuna-dashboard sqlite:///RUN/optuna.db` opens it.
            study_storage = optuna.storages.RDBStorage(f"sqlite:///{RunLayout(run_dir).optuna_db.resolve()}")
        found = FeasibleOptunaSearch(
            rejections=rejections,
            worst=spec.objective.worst,
            space=spec.space.optuna_define_by_run(),
            metric=spec.objective.name,
            mode=spec.objective.direction,
            sampler=tpe_sampler(settings, rejections),
            storage=study_storage,
            study_name=run_dir.name if run_dir is not None else "benchmark",
        )
        if warm is not None:
            found.warm_start(warm)
    # Unset only where no trial runs (the probe of a space, benchmarks): a search sets it from its cluster first
    # (automl.search._ray.with_concurrency).
    return ConcurrencyLimiter(found, max_concurrent=settings.max_concurrent or 1)


def tpe_sampler(settings: SearchSettings, rejections: Rejections):
    """Optuna's TPE as the settings ask: start-up trials, independent, multivariate or grouped densities, and the
    constant liar for concurrent trials (benchmarks/tpe_settings.py measured the defaults); its split into good and
    bad trials counts feasible trials only (:class:`FeasibleGamma`)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group: experimental since 2.8
        warnings.simplefilter("ignore", FutureWarning)  # gamma: deprecated since 4.9, to go in 6.0 (pyproject: <6)
        return optuna.samplers.TPESampler(
            seed=settings.seed,
            n_startup_trials=settings.tpe_startup(),
            multivariate=settings.tpe_sampling != "independent",
            group=settings.tpe_sampling == "grouped",
            constant_liar=settings.tpe_constant_liar,
            gamma=FeasibleGamma(rejections),
        )


class FeasibleGamma:
    """How many finished trials TPE models as good: Optuna's default (10%, at most 25), of the feasible ones only.

    TPE takes its "good" trials from the best complete ones, then, when there are fewer of those than the default
    asks for, from the infeasible ones (optuna/samplers/_tpe/sampler.py, ``_split_trials``). Counted over every
    finished trial, infeasible draws told to the study would fill the good group whenever they outnumber feasible
    trials ninefold, as at the start of a search with many concurrent trials (none finished yet): TPE would then
    draw near them, each such draw rejected and told too, a loop that measured hundreds of rejections per trial.
    Counted over the feasible ones, infeasible draws are always in the bad group.
    """

    def __init__(self, rejections: Rejections):
        self.rejections = rejections

    def __call__(self, finished: int) -> int:
        return min(math.ceil(0.1 * max(0, finished - self.rejections.count)), 25)


class FeasibleRandomSearch(Searcher):
    """Random search over the space's Ray Tune domains, seeded, that redraws candidates the image size rejects.

    ``first``: configurations to give before drawing any (a warm start's); they are in the searcher's saved state
    until given, so a resumed search gives the rest.
    """

    def __init__(self, space: SearchSpace, rejections: Rejections, seed: int, metric: str, mode: str,
                 first: list[dict] = ()):
        super().__init__(metric=metric, mode=mode)
        self.domains = space.ray_param_space()
        self.rejections = rejections
        self.rng = np.random.default_rng(seed)
        self.first = list(first)

    def suggest(self, trial_id: str) -> dict | None:
        return self.rejections.draw(self._sample)

    def _sample(self) -> dict[str, Any]:
        if self.first:
            return dict(self.first.pop(0))
        # Inactive dimensions are drawn too, and dropped by SearchSpace.active (as Tune's own random search did).
        return {name: domain.sample(random_state=self.rng) if isinstance(domain, Domain) else domain
                for name, domain in self.domains.items()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # random search learns nothing

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


#: The Optuna user attribute and constraint that mark a draw rejected as infeasible; the attribute holds the reason.
INFEASIBLE = "infeasible"
#: The Optuna user attribute of a warm start's told or enqueued trial: where its configuration came from.
WARM_START = "warm_start"


class FeasibleOptunaSearch(OptunaSearch):
    """Ray's Optuna searcher, except that a draw the image size rejects is told to the study at once and drawn again.

    Told as a complete trial with the objective's worst value and the violated constraint ``infeasible`` (Optuna's
    ``Trial.set_constraint``): TPE's split puts a trial that violates a constraint below every feasible one, complete
    or pruned (optuna/samplers/_tpe/sampler.py, ``_split_trials``), so the region around it goes to the "bad"
    density, and ``study.best_trial`` skips it. A FAIL state would teach TPE nothing (it only models complete and
    pruned trials), and PRUNED without intermediate values ranks it only among pruned trials. The reason is the
    trial's user attribute ``infeasible``, and its rule ``infeasible_reason``, for optuna-dashboard.
    """

    def __init__(self, rejections: Rejections, worst: float, **kwargs):
        self.rejections, self.worst = rejections, worst
        self.finished_in_study: set[str] = set()
        super().__init__(**kwargs)

    def suggest(self, trial_id: str) -> dict | None:
        def tell(error: SpecError) -> None:
            drawn = self._ot_trials.pop(trial_id)  # the next call of OptunaSearch.suggest asks for a new one
            drawn.set_user_attr(INFEASIBLE, str(error))
            drawn.set_user_attr(f"{INFEASIBLE}_reason", reason(error))
            drawn.set_constraint(INFEASIBLE, 1.0)
            self._ot_study.tell(drawn, self.worst)

        with warnings.catch_warnings():
            # Ray times the define-by-run function and warns past 0.05 s that training may be running in it; ours
            # only calls trial.suggest_*, where TPE samples: past a few thousand trials that takes a second, and the
            # warning, once per trial, would flood the console with advice that does not apply.
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
            return self.rejections.draw(lambda: OptunaSearch.suggest(self, trial_id), tell)

    def warm_start(self, warm: WarmStart) -> None:
        """Tell the study the warm start's results as completed trials, and enqueue its configurations: the study's
        next asks take them, in order. Done once, as the search is built: a resumed search restores this searcher
        and its study, which still hold them."""
        import optuna

        def searched(configuration: dict) -> optuna.trial.FixedTrial:
            fixed = optuna.trial.FixedTrial(configuration)
            self._space(fixed)  # the define-by-run function: the same suggest_* calls, so the same distributions
            return fixed

        self._ot_study.add_trials([
            optuna.trial.create_trial(params=(fixed := searched(configuration)).params,
                                      distributions=fixed.distributions, value=value, user_attrs={WARM_START: source})
            for configuration, value, source in warm.told])
        for configuration, source in warm.enqueued:
            self._ot_study.enqueue_trial(searched(configuration).params, user_attrs={WARM_START: source})

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # The study is the record of what was told: draws rejected after the snapshot this state comes from count.
        self.rejections.by_reason = {}
        for trial in self._ot_study.get_trials(deepcopy=False):
            if INFEASIBLE in trial.user_attrs:
                why = trial.user_attrs.get(f"{INFEASIBLE}_reason", INVALID)
                self.rejections.by_reason[why] = self.rejections.by_reason.get(why, 0) + 1
        # The study is written as trials end, this state only with Tune's experiment snapshots: a trial that the study
        # finished after the snapshot is resumed by Tune, and Optuna refuses to update a finished trial. The study
        # keeps the outcome it has; the resumed trial's results go to the store only.
        finished = {trial.number for trial in self._ot_study.get_trials(deepcopy=False) if trial.state.is_finished()}
        self.finished_in_study = {trial_id for trial_id, trial in self._ot_trials.items() if trial.number in finished}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.finished_in_study:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.finished_in_study:
            super().on_trial_complete(trial_id, result, error)
