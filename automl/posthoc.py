"""What happens to members' probabilities after training: test-time views, prior correction, temperature.

One definition of each, used twice: by the retrain and ensemble stages on numpy arrays, and by the
exported graph's layers (:mod:`automl.export`) on tensors, so the shipped model computes exactly
what the report measured. The graph runs, per image::

    resize -> each member, averaged over its TTA views -> prior correction (decision "prior")
           -> weighted average of the members -> temperature -> class probabilities

- **TTA** (``none | flips | dihedral``): a member's probabilities averaged over flipped and rotated
  copies of the image. ``flips`` are the 4 that keep the shape (identity, horizontal, vertical, both);
  ``dihedral`` adds the 4 with a quarter turn (all 8 symmetries of a square; square inputs only).
  Dermoscopy has no up or down, so each view is a picture the model could have been trained on.
- **Decision** (``balanced | prior``): members trained on a re-balanced class mix answer "which class, if
  the classes were that mix?". ``prior`` is the Bayes correction (Saerens et al., Neural Computation
  2002): each member's probabilities times training prior / the member's effective training mix
  (:func:`automl.trial.expected_class_mix`), renormalised. It trades balanced accuracy for accuracy, so
  the user chooses it; no objective does.
- **Temperature**: one temperature on the ensemble's averaged probabilities, ``p ** (1 / T)``
  renormalised (``softmax(log p / T)``), fitted on validation by minimising log loss. One scalar on
  the output is what the graph applies last and what the report calibrates; per-member temperatures
  would add K fits and interact with the ensemble weights for no measured gain. It changes no argmax.

Math functions take ``xp``: ``numpy`` (the default) or ``keras.ops`` (the graph). Nothing heavy is
imported here: TensorFlow loads only when views are made.

>>> import numpy as np
>>> correct_prior(np.array([[0.5, 0.5]]), prior_factor([0.8, 0.2], [0.5, 0.5])).round(3).tolist()
[[0.8, 0.2]]
>>> apply_temperature(np.array([[0.8, 0.2]]), 2.0).round(4).tolist()
[[0.6667, 0.3333]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from automl.stages import DECISIONS  # noqa: F401 - the rules this module applies, re-exported

#: Cheapest first: a tie on validation goes to the earlier mode.
TTA_MODES = ("none", "flips", "dihedral")
#: Each view as (quarter turns counter-clockwise, then a left-right flip). Each mode's views are a
#: prefix of the next mode's, so scoring every mode costs one prediction per distinct view.
VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
VIEW_COUNT = {"none": 1, "flips": 4, "dihedral": 8}
#: Probabilities are clipped here before a logarithm (a member can output an exact 0).
EPS = 1e-12


def tta_modes(image_size: Sequence[int]) -> tuple[str, ...]:
    """The TTA modes a member of this input size can run: a quarter turn needs a square input."""
    height, width = image_size
    return TTA_MODES if height == width else TTA_MODES[:2]


def views(images, mode: str) -> list:
    """The views of a batch (N, H, W, C) for ``mode``, as TensorFlow tensors (uint8 or float kept)."""
    import tensorflow as tf

    if mode not in VIEW_COUNT:
        raise ValueError(f"unknown TTA mode {mode!r}; use one of {', '.join(TTA_MODES)}")
    out = []
    for turns, flip in VIEWS[: VIEW_COUNT[mode]]:
        view = tf.image.rot90(images, k=turns) if turns else tf.convert_to_tensor(images)
        out.append(tf.reverse(view, axis=[2]) if flip else view)
    return out


def predict_modes(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                  modes: Sequence[str]) -> dict[str, np.ndarray]:
    """``{mode: probabilities averaged over the mode's views}``, predicting each distinct view once."""
    largest = max(modes, key=VIEW_COUNT.__getitem__)
    per_view = [predict(np.asarray(view)) for view in views(images, largest)]
    return {mode: np.mean(per_view[: VIEW_COUNT[mode]], axis=0) for mode in modes}


def prior_factor(prior: Sequence[float], mix: Sequence[float]) -> np.ndarray:
    """Training prior / effective training mix per class; 1 where the member saw no example of a class."""
    prior, mix = np.asarray(prior, dtype=np.float64), np.asarray(mix, dtype=np.float64)
    return np.divide(prior, mix, out=np.ones_like(prior), where=mix > 0)


def prior_factors(table, source) -> dict[str, np.ndarray]:
    """Each member's :func:`prior_factor`, by ``member_id``, from its ``members.parquet`` row (``source``)."""
    from automl.layout import RunFolderError

    if not {"class_prior", "class_mix"} <= set(table.columns):
        raise RunFolderError(f"{source}: no class_prior/class_mix columns (members retrained before the prior "
                             "correction existed); retrain them, or use --decision balanced")
    return {str(row.member_id): prior_factor(row.class_prior, row.class_mix) for row in table.itertuples()}


def correct_prior(probs, factor, xp=np):
    """Probabilities (N, K) times the per-class ``factor``, renormalised to sum to 1 (Saerens et al. 2002)."""
    shifted = probs * factor
    return shifted / xp.sum(shifted, axis=-1, keepdims=True)


def apply_temperature(probs, temperature: float, xp=np):
    """``softmax(log p / T)``: T > 1 softens, T < 1 sharpens, the argmax never changes."""
    logits = xp.log(xp.clip(probs, EPS, 1.0)) / temperature
    scaled = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    return scaled / xp.sum(scaled, axis=-1, keepdims=True)


def combine(member_probs: Sequence[np.ndarray], weights: Sequence[float],
            factors: Sequence[np.ndarray] | None = None, temperature: float = 1.0) -> np.ndarray:
    """The exported graph's tail on numpy arrays: prior correction per member, weighted average, temperature."""
    from automl.ensemble_methods import average

    if factors is not None:
        member_probs = [correct_prior(p, f) for p, f in zip(member_probs, factors, strict=True)]
    return apply_temperature(average(member_probs, weights), temperature)


def fit_temperature(probs: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature in ``bounds`` that minimises the log loss of ``probs`` on labels ``y`` (validation)."""
    from scipy.optimize import minimize_scalar

    from automl.metrics import metric_value

    def loss(log_t: float) -> float:
        return metric_value("loss", y, apply_temperature(probs, float(np.exp(log_t))), probs.shape[1])

    # Searched on log T: 0.5 and 2 are equally far from 1.
    found = minimize_scalar(loss, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))
