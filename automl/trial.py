"""One training run of one candidate: batches, imbalance handling, per-epoch validation metrics.

Every engine trains a candidate with the same batches (:func:`training_batches`) and callbacks
(:func:`candidate_callbacks`): ``automl train`` and ``retrain`` through :func:`fit_candidate`
(early stopping), a Ray Tune trial through :class:`EpochRunner` (one epoch per step, stopped by
the scheduler), KerasTuner through its hypermodel's ``fit``. The validation metrics are in each
epoch's ``logs`` when later callbacks run, as ``val_`` + every name of :data:`automl.objective.DIRECTIONS`,
with the epoch's cost (``epoch_s``, ``samples_seen``). Every epoch is as many samples as the train split
has, whatever the imbalance strategy (:func:`epoch_class_counts`), so epochs compare at equal compute.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from automl.data import Dataset
from automl.devices import configure_tensorflow, resolve_precision, training_scope  # noqa: F401 - re-exported
from automl.errors import InfeasibleError
from automl.hparams import ModelConfig
from automl.metrics import classification_metrics, prefixed
from automl.model import (BACKBONE_LAYER, build_model, compile_model, set_output_prior, set_trainable_layers,
                          warms_up)
from automl.objective import HEADLINE, Objective
from automl.spec import TrainingSpec

#: Pixels per prediction batch (validation, scoring, TTA): 64 images at 128x128, 512 (the most) at 28x28, so that a
#: batch's activations stay about the same size whatever the resolution.
PREDICT_PIXELS = 64 * 128 * 128
PREDICT_BATCH_MAX = 512
#: What one training epoch is, as a version recorded in a search's ``run.json`` (``epoch_definition``): 2 = as many
#: samples as the train split has, whatever the imbalance strategy (:func:`epoch_class_counts`). Runs that do not
#: record it used 1, where an oversampled epoch was the whole oversampled set (every image once, plus the copies that
#: lift the smaller classes), so that oversampling candidates trained more per epoch. Results of runs with another
#: definition are not comparable epoch for epoch: a warm start re-trains their configurations
#: (:mod:`automl.search._warm`).
EPOCH_DEFINITION = 2


def oversampled_counts(counts: np.ndarray, oversample_to: int) -> np.ndarray:
    """The class proportions oversampling aims at, as counts: each class smaller than the target (``oversample_to``,
    or the largest class when that is 0) lifted to it; absent classes stay absent. An epoch draws these
    proportions, scaled to the split's size (:func:`epoch_class_counts`)."""
    counts = np.asarray(counts)
    target = oversample_to or counts.max()
    return np.where((counts > 0) & (counts < target), target, counts)


def epoch_class_counts(counts: np.ndarray, imbalance: str, oversample_to: int) -> np.ndarray:
    """How many samples of each class one training epoch draws, from the training split's class ``counts``.

    An epoch is as many samples as the split has, whatever the imbalance strategy, so that epochs of
    different candidates cost the same and ASHA's rungs compare them at equal compute. Oversampling
    changes the class mix of those draws, not their number: the split's size is shared out in the
    proportions of :func:`oversampled_counts` (largest remainders round, ties to the lower class).

    >>> epoch_class_counts([8, 2, 0], "oversample", 4).tolist()  # 10 draws in the proportions 8:4
    [7, 3, 0]
    >>> epoch_class_counts([8, 2, 0], "class_weight", 4).tolist()
    [8, 2, 0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if imbalance not in ("oversample", "both"):
        return counts
    lifted = oversampled_counts(counts, oversample_to)
    drawn, remainders = np.divmod(counts.sum() * lifted, max(1, lifted.sum()))  # shares of the split, in integers
    remainders = np.where(counts > 0, remainders, -1)  # an absent class gets no draw
    drawn[np.argsort(-remainders, kind="stable")[: counts.sum() - drawn.sum()]] += 1
    return drawn


def resample_indices(
    labels: np.ndarray, n_classes: int, oversample_to: int, rng: np.random.Generator
) -> np.ndarray:
    """One oversampled epoch: as many indices as ``labels``, each class drawn :func:`epoch_class_counts` times.

    A class drawn at least as often as it occurs has every index once plus draws with replacement (the
    seeds' oversampling; the target is ``oversample_to``, or the largest class when that is 0: seed 003's
    S3, and ``oversample_to: 1000`` is its S2); a class drawn less often (the majority) gives a different
    subset without replacement each epoch.
    """
    counts = np.bincount(labels, minlength=n_classes)
    drawn = epoch_class_counts(counts, "oversample", oversample_to)
    parts = []
    for k in np.flatnonzero(drawn):
        members = np.flatnonzero(labels == k)
        if drawn[k] >= len(members):
            parts += [members, rng.choice(members, size=drawn[k] - len(members), replace=True)]
        else:
            parts.append(rng.choice(members, size=drawn[k], replace=False))
    return np.concatenate(parts) if parts else np.arange(0)


def _balanced_weights(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (K * n_k) per class, scikit-learn's 'balanced' weights (0 for an absent class)."""
    return _balanced_weights(np.bincount(labels, minlength=n_classes))


def expected_class_mix(counts: np.ndarray, imbalance: str, oversample_to: int) -> np.ndarray:
    """The class mix a member's loss saw, from its training split's class ``counts``: the counts
    :class:`TrainingBatches` draws each epoch (:func:`epoch_class_counts`) times its class weights, as
    shares summing to 1.

    Class weights make every present class count equally, with or without oversampling (``both``).
    The Bayes prior correction (:mod:`automl.posthoc`) divides by this mix, and the output layer starts
    at it (:func:`automl.model.set_output_prior`).

    >>> expected_class_mix([8, 2, 0], "oversample", 4).tolist()
    [0.7, 0.3, 0.0]
    >>> expected_class_mix([8, 2, 0], "both", 4).tolist()
    [0.5, 0.5, 0.0]
    """
    counts = epoch_class_counts(counts, imbalance, oversample_to).astype(np.float64)
    if imbalance in ("class_weight", "both"):
        counts = (counts > 0).astype(np.float64)  # n_k times its weight n / (K n_k): n / K for every present class
    return counts / counts.sum()


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled training batches, re-drawn every epoch with the config's imbalance strategy.

    Every epoch has as many samples as the split (``len(labels)``); oversampling changes which
    (:func:`resample_indices`). Oversampled copies are fresh draws each epoch, and the model's
    augmentation layers make each copy a different picture, as the seeds' "oversampling with
    augmentation" did. Epoch ``e``'s draw depends only on ``seed`` and ``e``, so batches made with
    ``first_epoch=e`` (a run resumed from a checkpoint) go on exactly as the uninterrupted run's would.

    The batches come in order (engines fit with ``shuffle=False``: the draw is already shuffled, and Keras' own shuffle
    of the batch order is not seeded, so a resumed run would see the epoch's batches in another order).

    ``images`` is the shared array of every image and ``rows`` the split's positions in it (all of it when None):
    each batch is gathered by index from it, so the split is never copied, and stays uint8 until the model, whose
    first step casts it (on the device, inside the compiled step).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: ModelConfig, n_classes: int, seed: int,
                 first_epoch: int = 0, rows: np.ndarray | None = None):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.labels, self.config, self.n_classes = images, labels, config, n_classes
        self.rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
        if len(self.rows) != len(labels):
            raise ValueError(f"{len(self.rows)} rows for {len(labels)} labels")
        self.seed, self.epoch, self.next_epoch = seed, None, first_epoch
        self._draw(first_epoch)  # Keras reads the first batches for their shapes before the first epoch begins

    def _draw(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, epoch])
        if self.config.imbalance in ("oversample", "both"):
            order = resample_indices(self.labels, self.n_classes, self.config.oversample_to, rng)
        else:
            order = np.arange(len(self.labels))
        self.order = rng.permutation(order)
        self.weights = None
        if self.config.imbalance in ("class_weight", "both"):
            # Weights follow the counts the model sees, so "both" only corrects what oversampling left.
            self.weights = balanced_class_weights(self.labels[self.order], self.n_classes).astype(np.float32)
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.config.batch_size)

    def __getitem__(self, index: int):
        picked = self.order[index * self.config.batch_size : (index + 1) * self.config.batch_size]
        x, y = self.images[self.rows[picked]], self.labels[picked]
        if self.weights is None:
            return x, y
        return x, y, self.weights[y]

    def on_epoch_begin(self) -> None:
        # Keras calls this once per epoch (on_epoch_end also at the start of every fit: it cannot count epochs).
        self._draw(self.next_epoch)
        self.next_epoch += 1


def predict_batch_size(image_size: Sequence[int]) -> int:
    """Images per prediction batch at this size (:data:`PREDICT_PIXELS`)."""
    return int(max(1, min(PREDICT_BATCH_MAX, PREDICT_PIXELS // (image_size[0] * image_size[1]))))


def gathered(images: np.ndarray, rows: np.ndarray | None = None, batch: int | None = None):
    """The images at ``rows`` (all when None) in batches of ``batch`` (:func:`predict_batch_size` when None), each
    gathered by index from the shared array as it is needed: only one batch is ever copied."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    batch = batch or predict_batch_size(images.shape[1:3])
    for start in range(0, len(rows), batch):
        yield images[rows[start : start + batch]]


def predict_proba(model: keras.Model, images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities, (N, n_classes), of the images at ``rows`` (all when None), predicted in batches."""
    out = [model(batch, training=False).numpy() for batch in gathered(images, rows)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


class ValidationMetrics(keras.callbacks.Callback):
    """Adds the validation metrics to each epoch's logs (one prediction pass over the val split's ``rows`` of the
    shared ``images``)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]):
        super().__init__()
        self.images, self.rows, self.labels, self.class_names = images, rows, labels, class_names

    def on_epoch_end(self, epoch, logs=None):
        probs = predict_proba(self.model, self.images, self.rows)
        metrics = classification_metrics(self.labels, probs, self.class_names)
        logs.update({k: v for k, v in prefixed(metrics, "val").items() if k != "val_n"})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _KeepsState:
    """For a Keras callback whose state (the attributes named in ``STATE``) must outlive one ``fit`` call: Keras'
    own callbacks start over at every call, this resets only at the first, and its state travels with a
    checkpoint (:meth:`state`, :meth:`load_state`)."""

    STATE: tuple[str, ...] = ()

    def on_train_begin(self, logs=None):
        if not getattr(self, "_begun", False):
            super().on_train_begin(logs)
            self._begun = True

    def state(self) -> dict:
        return {name: getattr(self, name, None) for name in self.STATE}

    def load_state(self, state: dict) -> None:
        self._begun = True
        for name in self.STATE:
            setattr(self, name, state.get(name))


class PlateauSchedule(_KeepsState, keras.callbacks.ReduceLROnPlateau):
    """The learning-rate cut on a plateau of the objective, whose state outlives one ``fit`` call (Ray Tune trains
    a trial one epoch per ``fit`` call; a resumed fit goes on from a checkpoint)."""

    STATE = ("wait", "best", "cooldown_counter")


class HeadWarmup(keras.callbacks.Callback):
    """A backbone's warm-up: the model is built with the backbone frozen; from epoch ``warmup_epochs``
    on, its last ``trainable_layers`` layers unfreeze and training goes on with a fresh optimizer at
    ``learning_rate * finetune_lr_factor``. A model saved after the unfreeze keeps its trainable flags and
    optimizer, so a run resumed from a checkpoint (a Tune trial, a Hyperband round) carries on alike."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def on_epoch_begin(self, epoch, logs=None):
        backbone = self.model.get_layer(BACKBONE_LAYER)
        if epoch < self.config.warmup_epochs or backbone.layers[-1].trainable:
            return  # still warming up, or fine-tuning already (the last layer is the first to unfreeze)
        set_trainable_layers(backbone, self.config.trainable_layers)
        with self.model.distribute_strategy.scope():  # the new optimizer's variables mirrored like the model's
            compile_model(self.model, self.config, self.config.learning_rate * self.config.finetune_lr_factor)
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.make_train_function(force=True)  # fit looks the step function up again at every batch


def head_warmup(config: ModelConfig | None) -> list[keras.callbacks.Callback]:
    return [HeadWarmup(config)] if config is not None and warms_up(config) else []


class EpochCost(keras.callbacks.Callback):
    """Adds what each epoch cost to its logs: ``epoch_s``, its seconds (training and the validation pass, when
    this callback follows :class:`ValidationMetrics`), and ``samples_seen``, the training samples drawn since the
    run began (every epoch draws as many, :func:`samples_per_epoch`): compute, not only epochs."""

    def __init__(self, samples_per_epoch: int):
        super().__init__()
        self.samples_per_epoch = samples_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_s"] = time.monotonic() - self.started
        logs["samples_seen"] = (epoch + 1) * self.samples_per_epoch


def candidate_callbacks(
    dataset: Dataset, objective: Objective, training: TrainingSpec, early_stopping_epochs: int | None = None,
    config: ModelConfig | None = None,
) -> list[keras.callbacks.Callback]:
    """What every run of a candidate trains with, searched or retrained: a backbone's head warm-up
    (given its ``config``), the validation metrics, the learning-rate schedule and, given a budget, early
    stopping on the objective with the best weights restored. Only the stopping rule differs between
    engines (ASHA in a search, this in a retrain). Each epoch's logs also say what it cost (:class:`EpochCost`)."""
    callbacks: list[keras.callbacks.Callback] = [
        *head_warmup(config),
        ValidationMetrics(dataset.images, dataset.rows("val"), dataset.labels("val"), dataset.class_names),
        EpochCost(samples_per_epoch(dataset))]
    if training.reduce_lr_patience:
        callbacks.append(PlateauSchedule(objective.name, factor=training.reduce_lr_factor,
                                         patience=training.reduce_lr_patience, mode=objective.direction))
    if early_stopping_epochs is not None:
        patience = training.early_stopping_patience or early_stopping_epochs
        callbacks.append(ResumableEarlyStopping(objective.name, patience=patience, mode=objective.direction,
                                                restore_best_weights=True))
    return callbacks


def build_candidate(config: ModelConfig, dataset: Dataset, training: TrainingSpec) -> keras.Model:
    """The candidate's compiled model, its output starting at the class mix it trains against
    (:func:`expected_class_mix`), built in the process's :func:`~automl.devices.training_scope` (its GPUs, the
    spec's precision); one above ``training.max_parameters`` is infeasible (:class:`~automl.errors.InfeasibleError`)."""
    with training_scope(resolve_precision(training.precision)):
        model = build_model(config, dataset.image_size, len(dataset.class_names))
    limit, count = training.max_parameters, model.count_params()
    if limit and count > limit:
        raise InfeasibleError(f"hyperparameters: the model has {count:,} parameters, above "
                              f"training.max_parameters ({limit:,})", "max_parameters")
    set_output_prior(model, expected_class_mix(dataset.class_counts("train"), config.imbalance,
                                               config.oversample_to))
    return model


def load_candidate(path: Path, training: TrainingSpec) -> keras.Model:
    """A candidate's checkpoint loaded to go on training, in the scope it was built in (:func:`build_candidate`)."""
    with training_scope(resolve_precision(training.precision)):
        return keras.saving.load_model(path)


def training_batches(config: ModelConfig, dataset: Dataset, seed: int, first_epoch: int = 0) -> TrainingBatches:
    """The train split's batches; ``first_epoch`` > 0 for a run resumed after that many epochs."""
    return TrainingBatches(dataset.images, dataset.labels("train"), config, len(dataset.class_names), seed, first_epoch,
                           rows=dataset.rows("train"))


def samples_per_epoch(dataset: Dataset) -> int:
    """Training samples per epoch, whatever the imbalance strategy: the train split's size."""
    return int(dataset.class_counts("train").sum())


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, objective: Objective, best: tuple) -> str:
    """One epoch's progress line: loss, the validation scores, time, and ``best`` = (value, epoch) so far."""
    shown = "  ".join(f"{name} {logs[f'val_{name}']:.3f}" for name in HEADLINE if f"val_{name}" in logs)
    return (f"epoch {epoch:>3}/{epochs}  loss {logs.get('loss', math.nan):.3f}  val: {shown}  ({seconds:.1f}s)  "
            f"best {objective.name} {best[0]:.3f} @ {best[1]}")


class EpochLine(keras.callbacks.Callback):
    """Writes :func:`epoch_line` after every epoch."""

    def __init__(self, objective: Objective, epochs: int, write: Callable[[str], None]):
        super().__init__()
        self.objective, self.epochs, self.write = objective, epochs, write
        self.best = (math.nan, 0)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective.name)
        if self.objective.better(value, self.best[0]):
            self.best = (float(value), epoch + 1)
        self.write(epoch_line(epoch + 1, self.epochs, logs or {}, time.monotonic() - self.started, self.objective,
                              self.best))


class ResumableEarlyStopping(_KeepsState, keras.callbacks.EarlyStopping):
    """Keras' early stopping on the objective, with the best epoch's weights restored at the end, whose state
    (and those weights, :attr:`best_weights`, saved apart) outlive one ``fit`` call: a fit resumed from a checkpoint
    (:class:`CandidateFit`) stops when, and restores what, the uninterrupted one would have."""

    STATE = ("wait", "best", "best_epoch", "stopped_epoch")


@dataclass
class FitResult:
    model: keras.Model
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan
    seconds: float = 0.0


class CandidateFit:
    """One training of a candidate from scratch, as ``automl train`` and ``retrain`` run it, that can be saved after
    any epoch and resumed from the save (:meth:`save`, :meth:`restore`) as if never interrupted: the model with its
    optimizer, the epochs done and their history, the learning-rate schedule, early stopping and its best weights.

    Training stops after ``training.early_stopping_patience`` epochs without improvement of the objective, and the
    best epoch's weights are restored. With ``learning_rates`` (one per epoch) it is a refit instead: exactly that
    many epochs at those rates (a validation run's schedule, replayed), nothing scored, nothing restored. The
    refit's dataset has its val split inside train (:meth:`Dataset.with_train_and_val`), so there is no validation
    to stop on or to cut the learning rate by.
    """

    MODEL, STATE, BEST = "model.keras", "fit.json", "best_weights.npz"

    def __init__(self, config: ModelConfig, dataset: Dataset, objective: Objective, training: TrainingSpec,
                 epochs: int | None = None, seed: int | None = None, learning_rates: Sequence[float] | None = None):
        self.config, self.dataset, self.objective, self.training = config, dataset, objective, training
        self.seed = training.seed if seed is None else seed
        self.epochs = epochs or training.epochs
        keras.utils.set_random_seed(self.seed)
        self.model = build_candidate(config, dataset, training)
        if learning_rates is None:
            self.callbacks = candidate_callbacks(dataset, objective, training, early_stopping_epochs=self.epochs,
                                                 config=config)
        else:
            self.epochs, rates = len(learning_rates), [float(r) for r in learning_rates]
            self.callbacks = [*head_warmup(config),
                              keras.callbacks.LearningRateScheduler(lambda epoch, _: rates[epoch]),
                              EpochCost(samples_per_epoch(dataset))]
        self.history: list[dict] = []
        self.seconds, self._started = 0.0, None  # training seconds so far; when the running fit began

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def _stopping(self) -> ResumableEarlyStopping | None:
        return next((c for c in self.callbacks if isinstance(c, ResumableEarlyStopping)), None)

    def run(self, callbacks: Sequence[keras.callbacks.Callback] = ()) -> FitResult:
        """Train the epochs not done yet (all of them, unless restored), then restore the best weights."""
        stopping = self._stopping()
        self._started = started = time.monotonic()
        if self.epochs_done < self.epochs and not (stopping and stopping.stopped_epoch):
            self.model.fit(training_batches(self.config, self.dataset, self.seed, first_epoch=self.epochs_done),
                           epochs=self.epochs, initial_epoch=self.epochs_done, verbose=0, shuffle=False,
                           callbacks=[*self.callbacks, _HistoryRows(self), *callbacks])
        elif stopping is not None and stopping.best_weights is not None:
            self.model.set_weights(stopping.best_weights)  # stopped before the interruption: as its end did
        self.seconds += time.monotonic() - started
        self._started = None
        best = self.objective.best_index([r.get(self.objective.name) for r in self.history])
        return FitResult(model=self.model, history=self.history,
                         best_epoch=self.history[best]["epoch"] if best is not None else 0,
                         best_value=self.history[best][self.objective.name] if best is not None else math.nan,
                         seconds=self.seconds)

    def save(self, folder: Path) -> None:
        """Everything needed to go on after the epochs done: call it at the end of an epoch (after every callback of
        :meth:`run` has seen it, e.g. from the last of its ``callbacks``)."""
        folder = Path(folder)
        self.model.save(folder / self.MODEL)
        running = time.monotonic() - self._started if self._started is not None else 0.0
        state = {"history": self.history, "seconds": self.seconds + running,
                 **{type(c).__name__: c.state() for c in self.callbacks
                    if isinstance(c, PlateauSchedule | ResumableEarlyStopping)}}
        stopping = self._stopping()
        if stopping is not None and stopping.best_weights is not None:
            np.savez(folder / self.BEST, *stopping.best_weights)
        (folder / self.STATE).write_text(json.dumps(state))

    def restore(self, folder: Path) -> None:
        folder = Path(folder)
        state = json.loads((folder / self.STATE).read_text())
        self.model = load_candidate(folder / self.MODEL, self.training)
        self.history, self.seconds = state["history"], state["seconds"]
        for callback in self.callbacks:
            name = type(callback).__name__
            if isinstance(callback, PlateauSchedule) and name in state:
                callback.load_state(state[name])
            elif isinstance(callback, ResumableEarlyStopping) and name in state:
                callback.load_state(state[name])
                if (folder / self.BEST).is_file():
                    with np.load(folder / self.BEST) as saved:
                        callback.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    @classmethod
    def is_saved(cls, folder: Path | None) -> bool:
        return folder is not None and (Path(folder) / cls.STATE).is_file()


class _HistoryRows(keras.callbacks.Callback):
    """Keeps a :class:`CandidateFit`'s history: each epoch's logs, as the fit's own callbacks (which run before it)
    left them."""

    def __init__(self, fit: CandidateFit):
        super().__init__()
        self.fit = fit

    def on_epoch_end(self, epoch, logs=None):
        self.fit.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})


def fit_candidate(
    config: ModelConfig,
    dataset: Dataset,
    objective: Objective,
    training: TrainingSpec,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    epochs: int | None = None,
    seed: int | None = None,
    learning_rates: Sequence[float] | None = None,
) -> FitResult:
    """Train ``config`` on the train split from scratch, scoring the val split after every epoch, in one go: a
    :class:`CandidateFit` that is never saved."""
    return CandidateFit(config, dataset, objective, training, epochs, seed, learning_rates).run(callbacks)


class EpochRunner:
    """Trains a candidate one epoch at a time, for engines that drive the loop (Ray Tune's Trainable).

    The same batches and callbacks as :func:`fit_candidate`, without early stopping (the search's
    scheduler decides when a trial stops). ``run_epoch`` returns the epoch's training loss and
    accuracy, the validation metrics, and what it cost (``epoch_s``, ``samples_seen``: :class:`EpochCost`);
    ``save``/``restore`` round-trip the model, the optimizer and the learning-rate schedule through a
    folder, and a restored runner draws the batches the uninterrupted one would have.
    """

    def __init__(self, config: ModelConfig, dataset: Dataset, objective: Objective, training: TrainingSpec, seed: int):
        self.config, self.dataset, self.seed, self.training = config, dataset, seed, training
        keras.utils.set_random_seed(seed)
        self.model = build_candidate(config, dataset, training)
        self.callbacks = candidate_callbacks(dataset, objective, training, config=config)
        self.epochs_done = 0
        self.batches = training_batches(config, dataset, seed)

    def run_epoch(self) -> dict[str, float]:
        history = self.model.fit(
            self.batches, epochs=self.epochs_done + 1, initial_epoch=self.epochs_done, callbacks=self.callbacks,
            verbose=0, shuffle=False,
        )
        self.epochs_done += 1
        return {k: float(v[-1]) for k, v in history.history.items()}

    def save(self, folder: Path) -> None:
        self.model.save(Path(folder) / "model.keras")
        schedule = {type(c).__name__: c.state() for c in self.callbacks if isinstance(c, PlateauSchedule)}
        (Path(folder) / "runner.json").write_text(json.dumps({"epochs_done": self.epochs_done, **schedule}))

    def restore(self, folder: Path) -> None:
        state = json.loads((Path(folder) / "runner.json").read_text())
        self.model = load_candidate(Path(folder) / "model.keras", self.training)
        self.epochs_done = state["epochs_done"]
        for callback in self.callbacks:
            if isinstance(callback, PlateauSchedule) and type(callback).__name__ in state:
                callback.load_state(state[type(callback).__name__])
        self.batches = training_batches(self.config, self.dataset, self.seed, first_epoch=self.epochs_done)


def evaluate(model: keras.Model, dataset: Dataset, split: str) -> dict:
    """The metrics of :func:`automl.metrics.classification_metrics` on one split."""
    probs = predict_proba(model, dataset.images, dataset.rows(split))
    return classification_metrics(dataset.labels(split), probs, dataset.class_names)
