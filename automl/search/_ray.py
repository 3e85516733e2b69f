"""The Ray Tune engine: random or Optuna TPE search, ASHA pruning, checkpoints every epoch, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray import tune

from automl import console
from automl.data import Dataset
from automl.errors import SpecError, UserError
from automl.hparams import ModelConfig
from automl.layout import IMAGE_SIZE, PARAMETERS, RunLayout, size_text
from automl.objective import Objective
from automl.remote import join
from automl.search._searchers import searcher
from automl.search._warm import WarmStart
from automl.space import SearchSpace
from automl.spec import SearchSettings, Spec, TrainingSpec
from automl.store import FINISHED, RunStore, write_run_info

#: Checkpoints Tune keeps per trial: all of them while it runs (None). With a number N, Tune snapshots the whole
#: experiment (every trial's state, about 25 kB each: a cost that grows with the run) whenever a trial has saved N
#: checkpoints since the last snapshot, so that a snapshot never names a deleted one; with trials checkpointing every
#: epoch that is one snapshot per trial or two, and the driver's cost per trial grew with the run. Without it, Tune
#: snapshots at its adaptive period only (TUNE_GLOBAL_CHECKPOINT_S=auto: within about 5% of the driver's time), and
#: :class:`FinishedCheckpoints` deletes a trial's checkpoints when it has finished.
CHECKPOINTS_KEPT = None
ORPHANED = ("lost with the driver: it started after Tune's last experiment snapshot, so the resumed search sampled "
            "another trial in its place")
from automl.trial import EpochRunner, configure_tensorflow


class CandidateTrainable(tune.Trainable):
    """One candidate CNN per trial, trained one epoch per ``step``.

    A class trainable, so that with ``reuse_actors`` a worker process keeps TensorFlow imported
    and warm across trials. The dataset arrives once, through the object store, as a setup argument.
    """

    def setup(self, config: dict, dataset: Dataset = None, space: SearchSpace = None, objective: Objective = None,
              training: TrainingSpec = None, seed: int = 0, cpus: float = 1, gpus: float = 0):
        import ray

        configure_tensorflow(cpus, gpus, ray.get_gpu_ids())  # a GPU TensorFlow cannot see fails the trial here
        # Hostname and IP do not tell apart two nodes on one machine; the node id does.
        self.node_id = ray.get_runtime_context().get_node_id()
        self.dataset, self.space, self.base_seed = dataset, space, seed
        self.objective, self.training = objective, training
        self._start(config)

    def _start(self, config: dict) -> None:
        self.params = self.space.active(config)
        self.started = time.monotonic()
        self.infeasible, self.restored_from_epoch = None, None
        try:
            # The searchers draw only candidates that fit the image size (Rejections); the check stays for a
            # search resumed from before they did. Building may find the model too big (training.max_parameters).
            model_config = ModelConfig.from_params(self.params)
            model_config.check_image_size(*self.dataset.image_size)
            # One seed for every trial: candidates differ by their hyperparameters, not by luck of the draw.
            self.runner = EpochRunner(model_config, self.dataset, self.objective, self.training, seed=self.base_seed)
        except SpecError as exc:
            self.infeasible, self.runner = str(exc), None

    def step(self) -> dict[str, Any]:
        if self.runner is None:
            # Infeasible (above max_parameters): report the worst score once so the searcher learns.
            return {"infeasible": self.infeasible, self.objective.name: self.objective.worst, "done": True}
        metrics = self.runner.run_epoch()
        extra = {"epoch": self.runner.epochs_done, "elapsed_s": time.monotonic() - self.started,
                 "node_id": self.node_id, PARAMETERS: int(self.runner.model.count_params()),
                 IMAGE_SIZE: size_text(self.dataset.image_size)}
        if self.restored_from_epoch is not None:
            extra["restored_from_epoch"] = self.restored_from_epoch
        return metrics | extra

    def save_checkpoint(self, checkpoint_dir: str) -> dict | None:
        if self.runner is None:
            return None
        self.runner.save(Path(checkpoint_dir))
        elapsed = time.monotonic() - self.started
        (Path(checkpoint_dir) / "state.json").write_text(json.dumps({"elapsed_s": elapsed}))
        return None

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        if self.runner is None or not checkpoint:
            return
        state = json.loads((Path(checkpoint) / "state.json").read_text())
        self.runner.restore(Path(checkpoint))
        self.started = time.monotonic() - state["elapsed_s"]
        self.restored_from_epoch = self.runner.epochs_done

    def reset_config(self, new_config: dict) -> bool:
        import keras

        keras.backend.clear_session()  # a reused worker must not accumulate graphs
        self._start(new_config)
        return True


def experiment_root(run_dir: Path, storage: str | None) -> str:
    """Where Tune keeps the experiment (``<root>/ray``): the run folder, or ``STORAGE/NAME`` on shared storage."""
    return join(storage, run_dir.name) if storage else str(run_dir.resolve())


def build_tuner(
    dataset: Dataset, spec: Spec, run_dir: Path, callbacks: list, storage: str | None = None, trainable=None,
    warm: WarmStart | None = None,
) -> tune.Tuner:
    """A fresh Tuner for the spec's searcher, scheduler and resources; Ray's folder goes to :func:`experiment_root`.
    ``warm``: what the searcher is told and given first (:mod:`automl.search._warm`)."""
    spec = with_concurrency(spec)
    settings = spec.search
    stop = tune.stopper.MaximumIterationStopper(settings.max_epochs)  # an iteration is an epoch
    if settings.epoch_budget is not None:
        # First: CombinedStopper asks its stoppers in turn and stops at the first yes, and the budget must see
        # every result (a trial's last epoch too).
        stop = tune.stopper.CombinedStopper(EpochBudget(settings, run_dir), stop)
    return tune.Tuner(
        _trainable(dataset, spec, trainable),
        tune_config=tune.TuneConfig(
            metric=spec.objective.name,
            mode=spec.objective.direction,
            search_alg=searcher(spec, dataset.image_size, run_dir, warm),
            scheduler=_scheduler(settings),
            num_samples=settings.num_samples,
            time_budget_s=settings.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=RunLayout.ray_dir_name,
            storage_path=experiment_root(run_dir, storage),
            stop=stop,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=CHECKPOINTS_KEPT,
                                                    checkpoint_at_end=False),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=[*callbacks, FinishedCheckpoints()],
            verbose=0,
        ),
    )


def with_concurrency(spec: Spec) -> Spec:
    """``spec`` with ``search.max_concurrent`` set: as given, or as many trials as the connected Ray cluster holds at
    a trial's request (:func:`~automl.devices.concurrent_trials`), said on the console."""
    import dataclasses

    import ray

    from automl.devices import concurrent_trials

    settings = spec.search
    if settings.max_concurrent is not None:
        return spec
    resources = ray.cluster_resources()
    count = concurrent_trials(resources, settings.cpu, settings.gpu)
    held = f"{resources.get('GPU', 0):g} GPU(s)" if settings.gpu > 0 else f"{resources.get('CPU', 0):g} CPU(s)"
    console.info(f"{count} trial(s) at once: what the cluster's {held} hold at {settings.cpu:g} CPU and "
                 f"{settings.gpu:g} GPU per trial (an autoscaling cluster that has not started its workers yet: "
                 "pass --max-concurrent)")
    return dataclasses.replace(spec, search=dataclasses.replace(settings, max_concurrent=count))


def restore_tuner(
    dataset: Dataset, spec: Spec, run_dir: Path, storage: str | None = None, trainable=None
) -> tune.Tuner:
    """The interrupted experiment of ``run_dir``, with finished trials kept and the searcher's state."""
    path = join(experiment_root(run_dir, storage), RunLayout.ray_dir_name)
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{run_dir}: no interrupted Ray experiment to resume here; start it without --resume")
    # The searcher, its state (the rejected draws' count too), the stoppers and the callbacks come from Tune's
    # saved experiment.
    return tune.Tuner.restore(path, trainable=_trainable(dataset, spec, trainable), resume_unfinished=True,
                              resume_errored=True)


class EpochBudget(tune.Stopper):
    """Ends the search once its trials have trained ``settings.epoch_budget`` epochs in all, every epoch counting one.

    The epochs counted are those the results store records (:meth:`~automl.layout.RunLayout.epochs_trained`: an
    epoch that a retried trial repeats counts once), over every sitting of a resumed search: a restored stopper
    starts from the store's epochs and adds each trial's new ones as Tune reports them. Trials training when the
    budget is reached are stopped and no trial starts after it; an epoch that another concurrent trial finishes at
    that moment can still arrive, so a search may end up to ``max_concurrent - 1`` epochs past the budget.
    """

    def __init__(self, settings: SearchSettings, run_dir: Path):
        self.settings, self.run_dir = settings, Path(run_dir)
        self.epochs: dict[str, int] | None = None  # each trial's epochs so far
        self.spent = 0

    def __getstate__(self):
        return self.__dict__ | {"epochs": None, "spent": 0}  # Tune pickles its stoppers at the start: count again

    def _load(self) -> None:
        if self.epochs is None:
            run = RunLayout(self.run_dir)
            self.spent = run.epochs_trained()
            self.epochs = run.read_epochs().groupby("trial_id").size().to_dict() if self.spent else {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._load()
        done = int(result.get("epoch") or 0)
        if done > self.epochs.get(trial_id, 0):
            self.spent += done - self.epochs.get(trial_id, 0)
            self.epochs[trial_id] = done
        return self.settings.budget_spent(self.spent)

    def stop_all(self) -> bool:
        self._load()
        return self.settings.budget_spent(self.spent)


class StoreCallback(tune.Callback):
    """Feeds Tune's events to the results store and prints a line per finished trial.

    The store writes in batches (:class:`~automl.store.RunStore`): every step of Tune's loop gives it the chance,
    so nothing waits in memory much longer than its flush interval. After a driver was killed, the first step of the
    resumed experiment reconciles the store with the trials Tune restored (:meth:`_reconcile`).
    """

    def __init__(self, store_args: dict, space: SearchSpace, report):
        self.store_args, self.space, self.report = store_args, space, report
        self.store: RunStore | None = None
        self.reconciled = False

    def __getstate__(self):
        # Tune pickles callbacks into its experiment state; the store is reloaded from disk on resume.
        return self.__dict__ | {"store": None, "reconciled": False}

    def _open(self) -> RunStore:
        if self.store is None:
            self.store = RunStore(**self.store_args)
        return self.store

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open().trial_started(trial.trial_id, self.space.active(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return  # an infeasible candidate's single worst-score report
        info = {key: str(result.get(key, "")) for key in ("hostname", "node_ip", "node_id")}
        if result.get("restored_from_epoch") is not None:
            info["restored_from_epoch"] = int(result["restored_from_epoch"])
        self._open().epoch(trial.trial_id, result["epoch"], result, result.get("elapsed_s", 0.0), info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("infeasible"):
            self._finish(trial, "errored", result["infeasible"])
        else:
            self._finish(trial, "completed")

    def on_step_begin(self, iteration, trials, **info):
        if not self.reconciled:
            self.reconciled = True
            self._reconcile(trials, restored=True)

    def on_step_end(self, iteration, trials, **info):
        if self.store is not None:
            self.store.flush()  # written when due: every flush interval, or when enough rows wait
            self.report.tick(self.store)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._open().trial_retried(trial.trial_id)
        console.info(
            f"trial {trial.trial_id} failed ({_last_error_line(trial)}); retrying from its last checkpoint "
            f"(traceback: {getattr(trial, 'error_file', None) or 'in the trial folder'})"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "errored", _last_error_line(trial))

    def _finish(self, trial, status: str, error: str | None = None) -> None:
        store = self._open()
        store.trial_finished(trial.trial_id, status, error)
        self.report.trial_line(store, trial.trial_id)

    def on_experiment_end(self, trials, **info):
        self._reconcile(trials)
        self._open().close()  # everything written, the parts compacted into the two Parquet files

    def _reconcile(self, trials, restored: bool = False) -> None:
        """Make the store agree with Tune's trials: outcomes the store lost with a killed driver, and orphans.

        A trial Tune has as finished but the store not (its last flush was lost) gets its last result and outcome.
        On a restored experiment, Tune does not know the trials that started after its last experiment snapshot, and
        samples as many new ones in their place: such a trial the store has as running is recorded as errored, with
        why; one it has as finished is kept (finished work is never dropped). Both lists go to ``run.json``
        (``after_snapshot``), so the run has ``num_samples`` trials plus these.
        """
        store, known = self._open(), set()
        for trial in trials:
            known.add(trial.trial_id)
            row = store.trials.get(trial.trial_id) or {}
            if trial.status not in (trial.TERMINATED, trial.ERROR) or row.get("status") in FINISHED:
                continue
            result = trial.last_result or {}
            if "epoch" in result and int(result["epoch"]) > int(row.get("epochs") or 0):
                self.on_trial_result(0, trials, trial, result)
            if trial.status == trial.ERROR:
                self.on_trial_error(0, trials, trial)
            else:
                self.on_trial_complete(0, trials, trial)
        if not restored:
            return
        # Trials that started after Tune's last experiment snapshot: Tune samples as many new ones in their place.
        unknown = sorted(trial_id for trial_id in store.trials if trial_id not in known)
        for trial_id in unknown:
            if store.trials[trial_id].get("status") == "running":
                store.trial_finished(trial_id, "errored", ORPHANED)
        orphaned = [trial_id for trial_id in unknown if store.trials[trial_id].get("error") == ORPHANED]
        kept = [trial_id for trial_id in unknown if trial_id not in orphaned]
        if unknown:
            console.info(f"Tune's last experiment snapshot misses {len(unknown)} trial(s) of the store: {len(kept)} "
                         f"finished (kept), {len(orphaned)} lost while running (recorded as errored); the search "
                         f"samples others in their place")
        write_run_info(store.layout.root, after_snapshot={"finished_kept": kept, "orphaned": orphaned})


class FinishedCheckpoints(tune.Callback):
    """Deletes a trial's checkpoints once it has completed or been pruned: only a running trial, or a failed one
    that a resumed search retries, can need them, and with thousands of trials they would fill the disk.

    Not at once: until an experiment snapshot records the trial as finished, a resumed search would restore it from
    them. Tune calls ``get_state`` as it writes each snapshot; a trial's checkpoints go when the second snapshot after
    it finished is written, by when the first has been copied to the storage, or when the search ends.
    """

    def __init__(self):
        self.snapshots, self.waiting = 0, []  # (snapshots written when the trial finished, its storage)

    def __getstate__(self):
        return {"snapshots": 0, "waiting": []}  # a restored experiment starts counting again

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.waiting.append((self.snapshots, trial.storage))

    def get_state(self):
        self.snapshots += 1
        due = [storage for snapshots, storage in self.waiting if snapshots < self.snapshots - 1]
        self.waiting = [(snapshots, storage) for snapshots, storage in self.waiting if snapshots >= self.snapshots - 1]
        for storage in due:
            _delete_checkpoints(storage)
        return None  # nothing to keep in the snapshot

    def on_experiment_end(self, trials, **info):
        # After a normal end Tune has just written and uploaded a final snapshot (wait=True), which records every
        # waiting trial as finished. A trial still unfinished means the loop ended on an error, with no final
        # snapshot: the checkpoints then stay for --resume.
        if all(trial.is_finished() for trial in trials):
            for snapshots, storage in self.waiting:
                if snapshots < self.snapshots:
                    _delete_checkpoints(storage)
            self.waiting = []


def _delete_checkpoints(storage) -> None:
    from pyarrow import fs

    try:
        for entry in storage.storage_filesystem.get_file_info(fs.FileSelector(storage.trial_fs_path)):
            if entry.type == fs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                storage.storage_filesystem.delete_dir(entry.path)
    except (OSError, RuntimeError):
        pass  # gone already, or the storage unreachable for a moment: disk space is all that is lost


def _trainable(dataset: Dataset, spec: Spec, trainable=None):
    from automl.search import ray_on_this_machine

    # with_parameters puts the dataset into the object store once: on this machine as the name of the decode cache,
    # which every trial maps (one copy in the page cache), on a cluster as the images, once per node. A trial
    # gathers its batches from that one array and copies none of it.
    settings = spec.search
    dataset = dataset.shared_by_file(ray_on_this_machine())
    trainable = tune.with_parameters(trainable or CandidateTrainable, dataset=dataset, space=spec.space,
                                     objective=spec.objective, training=spec.training, seed=settings.seed,
                                     cpus=settings.cpu, gpus=settings.gpu)
    return tune.with_resources(trainable, {"cpu": settings.cpu, "gpu": settings.gpu})


def _scheduler(settings: SearchSettings):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=settings.max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def _last_error_line(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "trial failed"
