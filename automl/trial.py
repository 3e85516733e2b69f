"""One training run of one candidate: batches, imbalance handling, per-epoch validation metrics.

Whoever runs the candidate (``automl train``, a Ray Tune trial, KerasTuner) passes extra Keras
callbacks to :func:`fit_candidate`; the validation metrics are already in the epoch's ``logs``
when those callbacks run, under the names ``val_balanced_accuracy``, ``val_macro_f1``,
``val_accuracy``, ``val_auc`` and ``val_loss``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from automl.data import Dataset
from automl.hparams import ModelConfig
from automl.metrics import classification_metrics, prefixed
from automl.model import build_model
from automl.spec import TrainingSpec, metric_mode

PREDICT_BATCH = 512


def resample_indices(
    labels: np.ndarray, n_classes: int, oversample_to: int, rng: np.random.Generator
) -> np.ndarray:
    """Every index once, plus draws with replacement that lift each class smaller than the target
    up to it. The target is ``oversample_to``, or the largest class when that is 0 (seed 003's S3;
    ``oversample_to: 1000`` is its S2)."""
    counts = np.bincount(labels, minlength=n_classes)
    target = oversample_to or counts.max()
    extra = [
        rng.choice(np.flatnonzero(labels == k), size=target - counts[k], replace=True)
        for k in range(n_classes)
        if 0 < counts[k] < target
    ]
    return np.concatenate([np.arange(len(labels)), *extra]) if extra else np.arange(len(labels))


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (K * n_k) per class, scikit-learn's 'balanced' weights (0 for an absent class)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled training batches, re-drawn every epoch with the config's imbalance strategy.

    Oversampled copies are fresh draws each epoch, and the model's augmentation layers make each
    copy a different picture, as the seeds' "oversampling with augmentation" did.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: ModelConfig, n_classes: int, seed: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.labels, self.config, self.n_classes = images, labels, config, n_classes
        self.rng = np.random.default_rng(seed)
        self._draw()

    def _draw(self) -> None:
        if self.config.imbalance in ("oversample", "both"):
            order = resample_indices(self.labels, self.n_classes, self.config.oversample_to, self.rng)
        else:
            order = np.arange(len(self.labels))
        self.order = self.rng.permutation(order)
        self.weights = None
        if self.config.imbalance in ("class_weight", "both"):
            # Weights follow the counts the model sees, so "both" only corrects what oversampling left.
            self.weights = balanced_class_weights(self.labels[self.order], self.n_classes).astype(np.float32)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.config.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.config.batch_size : (index + 1) * self.config.batch_size]
        x, y = self.images[rows].astype(np.float32), self.labels[rows]
        if self.weights is None:
            return x, y
        return x, y, self.weights[y]

    def on_epoch_end(self) -> None:
        self._draw()


def predict_proba(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Class probabilities, (N, n_classes), predicted in batches."""
    out = [
        model(images[i : i + PREDICT_BATCH].astype(np.float32), training=False).numpy()
        for i in range(0, len(images), PREDICT_BATCH)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


class ValidationMetrics(keras.callbacks.Callback):
    """Adds the validation metrics to each epoch's logs (one prediction pass over the val split)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]):
        super().__init__()
        self.images, self.labels, self.class_names = images, labels, class_names

    def on_epoch_end(self, epoch, logs=None):
        metrics = classification_metrics(self.labels, predict_proba(self.model, self.images), self.class_names)
        logs.update({k: v for k, v in prefixed(metrics, "val").items() if k != "val_n"})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochLine(keras.callbacks.Callback):
    """One progress line per epoch: loss, the validation metrics, time, and the best so far."""

    def __init__(self, metric: str, epochs: int, write: Callable[[str], None]):
        super().__init__()
        self.metric, self.epochs, self.write = metric, epochs, write
        self.sign = 1 if metric_mode(metric) == "max" else -1
        self.best, self.best_epoch = -math.inf, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        value = logs.get(self.metric, math.nan)
        if self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, epoch + 1
        shown = "  ".join(
            f"{name.removeprefix('val_')} {logs[name]:.3f}"
            for name in ("val_balanced_accuracy", "val_macro_f1", "val_accuracy", "val_auc")
            if name in logs
        )
        self.write(
            f"epoch {epoch + 1:>3}/{self.epochs}  loss {logs.get('loss', math.nan):.3f}  val: {shown}  "
            f"({time.monotonic() - self.started:.1f}s)  best {self.metric} {self.sign * self.best:.3f} @ {self.best_epoch}"
        )


@dataclass
class FitResult:
    model: keras.Model
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan
    seconds: float = 0.0


def fit_candidate(
    config: ModelConfig,
    dataset: Dataset,
    training: TrainingSpec,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    epochs: int | None = None,
    model: keras.Model | None = None,
    initial_epoch: int = 0,
    early_stopping: bool = True,
    seed: int | None = None,
) -> FitResult:
    """Train ``config`` on the dataset's train split, scoring the val split after every epoch.

    With ``early_stopping``, training stops after ``training.early_stopping_patience`` epochs
    without improvement of ``training.metric`` and the best epoch's weights are restored.
    ``model`` and ``initial_epoch`` continue a run from a checkpoint.
    """
    seed = training.seed if seed is None else seed
    epochs = epochs or training.epochs
    if model is None:
        keras.utils.set_random_seed(seed)
        model = build_model(config, dataset.image_size, len(dataset.class_names))
    x_train, y_train = dataset.subset("train")
    x_val, y_val = dataset.subset("val")
    batches = TrainingBatches(x_train, y_train, config, len(dataset.class_names), seed + initial_epoch)
    mode = metric_mode(training.metric)
    ours = [ValidationMetrics(x_val, y_val, dataset.class_names)]
    if training.reduce_lr_patience:
        ours.append(
            keras.callbacks.ReduceLROnPlateau(
                training.metric, factor=training.reduce_lr_factor, patience=training.reduce_lr_patience, mode=mode
            )
        )
    stopper = None
    if early_stopping:
        patience = training.early_stopping_patience or epochs
        stopper = keras.callbacks.EarlyStopping(training.metric, patience=patience, mode=mode, restore_best_weights=True)
        ours.append(stopper)
    started = time.monotonic()
    history = model.fit(
        batches, epochs=epochs, initial_epoch=initial_epoch, callbacks=[*ours, *callbacks], verbose=0
    )
    rows = [
        {"epoch": initial_epoch + i + 1, **{k: float(v[i]) for k, v in history.history.items()}}
        for i in range(len(history.epoch))
    ]
    values = [r.get(training.metric, math.nan) for r in rows]
    best = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values)) if rows else 0
    return FitResult(
        model=model,
        history=rows,
        best_epoch=rows[best]["epoch"] if rows else 0,
        best_value=values[best] if rows else math.nan,
        seconds=time.monotonic() - started,
    )


class EpochRunner:
    """Trains a candidate one epoch at a time, for engines that drive the loop (Ray Tune's Trainable).

    ``run_epoch`` returns the epoch's training loss and accuracy plus the validation metrics;
    ``save``/``restore`` round-trip the model and optimizer state through a ``.keras`` file.
    """

    def __init__(self, config: ModelConfig, dataset: Dataset, seed: int):
        self.config, self.dataset, self.seed = config, dataset, seed
        keras.utils.set_random_seed(seed)
        self.model = build_model(config, dataset.image_size, len(dataset.class_names))
        self.x_train, self.y_train = dataset.subset("train")
        self.validation = ValidationMetrics(*dataset.subset("val"), dataset.class_names)
        self.epochs_done = 0
        self._batches()

    def _batches(self) -> None:
        n_classes = len(self.dataset.class_names)
        self.batches = TrainingBatches(self.x_train, self.y_train, self.config, n_classes, self.seed + self.epochs_done)

    def run_epoch(self) -> dict[str, float]:
        history = self.model.fit(
            self.batches, epochs=self.epochs_done + 1, initial_epoch=self.epochs_done,
            callbacks=[self.validation], verbose=0,
        )
        self.epochs_done += 1
        return {k: float(v[-1]) for k, v in history.history.items()}

    def save(self, path) -> None:
        self.model.save(path)

    def restore(self, path, epochs_done: int) -> None:
        self.model = keras.saving.load_model(path)
        self.epochs_done = epochs_done
        self._batches()


def evaluate(model: keras.Model, dataset: Dataset, split: str) -> dict:
    """The metrics of :func:`automl.metrics.classification_metrics` on one split."""
    images, labels = dataset.subset(split)
    return classification_metrics(labels, predict_proba(model, images), dataset.class_names)


_TF_CONFIGURED = False


def configure_tensorflow(cpus: float) -> None:
    """Once per worker process: TF's thread pools sized to the trial's CPU share, GPU memory growth."""
    global _TF_CONFIGURED
    if _TF_CONFIGURED:
        return
    import tensorflow as tf

    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # the runtime was already initialised in this process; keep its pools
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    _TF_CONFIGURED = True
