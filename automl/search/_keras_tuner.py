"""The same search space under KerasTuner's own tuners (single process), for engine comparisons.

Models come from the same builder and train on the same batches with the same per-epoch
validation metrics as Ray trials, and every epoch lands in the same results store.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import keras_tuner as kt

from automl.data import Dataset
from automl.errors import SpecError
from automl.hparams import ModelConfig
from automl.layout import EPOCH_SECONDS, IMAGE_SIZE, PARAMETERS, RunLayout, size_text
from automl.search._feasible import Rejections
from automl.spec import Spec
from automl.store import RunStore
from automl.trial import build_candidate, candidate_callbacks, training_batches


class SpaceHyperModel(kt.HyperModel):
    """Builds candidates through :func:`automl.trial.build_candidate` and fits them on our batches."""

    def __init__(self, spec: Spec, dataset: Dataset, store: RunStore):
        super().__init__(name="automl")
        self.spec, self.space, self.dataset, self.store, self.seed = spec, spec.space, dataset, store, spec.search.seed
        self.trial_id: str | None = None
        self.trial_started = 0.0
        self.epochs_trained = store.layout.epochs_trained()  # a resumed search goes on from what the store holds

    def out_of_epochs(self) -> bool:
        return self.spec.search.budget_spent(self.epochs_trained)

    def config(self, hp: kt.HyperParameters) -> ModelConfig:
        try:
            config = ModelConfig.from_params(self.space.active(hp.values))
            config.check_image_size(*self.dataset.image_size)
        except SpecError as exc:
            raise kt.errors.FailedTrialError(str(exc)) from None
        return config

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        try:
            return build_candidate(self.config(hp), self.dataset, self.spec.training)
        except SpecError as exc:  # above training.max_parameters
            raise kt.errors.FailedTrialError(str(exc)) from None

    def fit(self, hp, model, *args, callbacks=(), epochs=1, initial_epoch=0, **kwargs):
        config = self.config(hp)
        batches = training_batches(config, self.dataset, self.seed, first_epoch=initial_epoch)
        # Ours first (validation metrics, lr schedule): KerasTuner's own callbacks read the objective from the logs.
        ours = candidate_callbacks(self.dataset, self.spec.objective, self.spec.training, config=config)
        return model.fit(batches, epochs=epochs, initial_epoch=initial_epoch, verbose=0, shuffle=False,
                         callbacks=[*ours, *callbacks, _StoreEpochs(self)])


class _StoreEpochs(keras.callbacks.Callback):
    """Records each epoch in the store, with the model's parameter count and the epoch's seconds (validation
    included), unless the logs carry their own."""

    def __init__(self, hypermodel: SpaceHyperModel):
        super().__init__()
        self.hypermodel = hypermodel
        self.epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        hm = self.hypermodel
        import socket

        costs = {PARAMETERS: self.model.count_params(), EPOCH_SECONDS: time.monotonic() - self.epoch_started,
                 IMAGE_SIZE: size_text(hm.dataset.image_size)}
        hm.store.epoch(hm.trial_id, epoch + 1, costs | (logs or {}), time.monotonic() - hm.trial_started,
                       {"hostname": socket.gethostname(), "node_ip": "127.0.0.1"})
        hm.epochs_trained += 1
        if hm.out_of_epochs():
            self.model.stop_training = True  # the epoch budget is spent: this trial ends here, and no other starts


def run_keras_tuner(dataset: Dataset, spec: Spec, run_dir: Path, store: RunStore, report, resume: bool) -> None:
    """Run KerasTuner's Hyperband, BayesianOptimization or RandomSearch over the space."""
    settings, space = spec.search, spec.space
    hypermodel = SpaceHyperModel(spec, dataset, store)
    started = time.monotonic()
    base = {"hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization,
            "random": kt.RandomSearch}[settings.keras_tuner]

    class Tuner(base):
        def run_trial(self, trial, *args, **kwargs):
            hypermodel.trial_id, hypermodel.trial_started = trial.trial_id, time.monotonic()
            store.trial_started(trial.trial_id, space.active(trial.hyperparameters.values))
            return super().run_trial(trial, *args, **kwargs)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            failed = trial.status in ("FAILED", "INVALID")
            store.trial_finished(trial.trial_id, "errored" if failed else "completed",
                                 (trial.message or "failed").strip().splitlines()[-1] if failed else None)
            store.flush(force=True)  # trials here are few and long: each outcome is written at once
            report.trial_line(store, trial.trial_id)
            if (settings.time_budget_s and time.monotonic() - started > settings.time_budget_s
                    or hypermodel.out_of_epochs()):
                # Out of time or epochs: the oracle hands out no further trial once max_trials is reached.
                self.oracle.max_trials = len(self.oracle.trials)

    budget = {"max_trials": settings.num_samples}
    if settings.keras_tuner == "hyperband":
        budget = {"max_epochs": settings.max_epochs, "factor": settings.reduction_factor}
    elif settings.keras_tuner == "bayesian":
        # KerasTuner's own default, 3 random trials per hyperparameter (over 80 for ham10000_cnn.yaml), would leave
        # the Gaussian process idle in most budgets: the start-up rule TPE has, the same setting (KerasTuner reads 0
        # as its default, and its process needs two points).
        budget["num_initial_points"] = max(2, settings.tpe_startup())
    tuner = Tuner(
        hypermodel=hypermodel,
        objective=kt.Objective(spec.objective.name, direction=spec.objective.direction),
        hyperparameters=space.keras_tuner_hyperparameters(),
        tune_new_entries=False,
        seed=settings.seed,
        directory=str(run_dir),
        project_name=RunLayout.keras_tuner_dir_name,
        overwrite=not resume,
        max_consecutive_failed_trials=max(3, settings.num_samples),
        **budget,
    )
    _draw_feasible(tuner.oracle, Rejections(space, dataset.image_size, f"{spec.source or 'spec'}: hyperparameters",
                                            run_dir))
    if not hypermodel.out_of_epochs():
        tuner.search(epochs=settings.max_epochs)


def _draw_feasible(oracle: kt.Oracle, rejections: Rejections) -> None:
    """The oracle's draws redrawn while the image size rejects them, counted in ``run.json``: none takes a trial.

    Every draw of RandomSearch and Hyperband, and BayesianOptimization's start-up draws, are the oracle's
    ``_random_values``; the Gaussian process's proposals are checked in :func:`_tell_gaussian_process`. KerasTuner's
    saved oracle does not hold the count: a resumed search takes it from ``run.json``.
    """
    recorded = RunLayout(rejections.run_dir).read_info().get("infeasible_draws") or {}
    rejections.by_reason = dict(recorded.get("by_reason") or {})
    random_values = oracle._random_values
    oracle._random_values = lambda: rejections.draw(random_values)
    if isinstance(oracle, kt.oracles.BayesianOptimizationOracle):
        _tell_gaussian_process(oracle, rejections)


#: Infeasible proposals in a row the Gaussian process may make for one trial before that trial is a random
#: feasible draw instead: each proposal costs a fit of the process.
GP_PROPOSALS = 5


def _tell_gaussian_process(oracle: kt.oracles.BayesianOptimizationOracle, rejections: Rejections) -> None:
    """The Gaussian process's proposals that cannot run are told to it as the worst result so far, and it proposes
    again: what Optuna is told of an infeasible draw. KerasTuner leaves failed trials out of the process's fit, so
    before this it kept proposing such configurations, each an errored trial (5 of 15 at seed 0 of
    ``benchmarks/search_efficiency.py``). The told proposals live in this process only: a resumed search's process
    learns the region again from its own proposals.
    """
    told: list[kt.engine.trial.Trial] = []
    populate, vectorize = oracle.populate_space, oracle._vectorize_trials

    def vectorize_with_told():
        scores = [t.score for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
        if not told or not scores:
            return vectorize()
        worst = min(scores) if oracle.objective.direction == "max" else max(scores)
        for trial in told:
            trial.score = worst
        trials = oracle.trials
        oracle.trials = trials | {trial.trial_id: trial for trial in told}
        try:
            return vectorize()
        finally:
            oracle.trials = trials

    def populate_feasible(trial_id: str) -> dict:
        proposals = []

        def propose():
            proposal = populate(trial_id) if len(proposals) < GP_PROPOSALS else oracle._random_populate_space()
            proposals.append(proposal)
            return proposal["values"] if proposal["status"] == kt.engine.trial.TrialStatus.RUNNING else None

        def tell(error):
            hyperparameters = oracle.hyperparameters.copy()
            hyperparameters.values = dict(proposals[-1]["values"])
            told.append(kt.engine.trial.Trial(hyperparameters, trial_id=f"infeasible-{len(told)}",
                                              status=kt.engine.trial.TrialStatus.COMPLETED))

        values = rejections.draw(propose, tell)
        return {"status": proposals[-1]["status"], "values": values}

    oracle.populate_space = populate_feasible
    oracle._vectorize_trials = vectorize_with_told
