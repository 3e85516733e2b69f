"""Self-contained models: raw uint8 RGB images of any size in, class probabilities out.

:func:`assemble` wraps one or more trained members into one Keras graph: a resize layer that
calls :func:`automl.data.resize_tensor` (the very function the training cache used), every
member, and the weighted average of their probabilities. :func:`export_model` writes it as a
``.keras`` file and as a TensorFlow SavedModel that plain TensorFlow loads without this package::

    import tensorflow as tf
    model = tf.saved_model.load("MODEL_DIR/saved_model")
    probs = model.serve(tf.constant(image_uint8[None]))   # (1, n_classes)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from automl.data import resize_tensor
from automl.files import atomic_write, staged_dir, write_json
from automl.layout import ModelLayout, RunLayout
from automl.objective import HEADLINE, Objective


@keras.saving.register_keras_serializable(package="automl")
class ResizeImages(keras.layers.Layer):
    """Resizes a batch of raw images to the members' input size, exactly as the training cache did."""

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, images):
        return resize_tensor(images, (self.height, self.width))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, 3)

    def get_config(self):
        return super().get_config() | {"height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package="automl")
class WeightedAverage(keras.layers.Layer):
    """The ensemble: a fixed weighted mean of the members' probabilities."""

    def __init__(self, member_weights: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        total = float(sum(member_weights))
        self.member_weights = [float(w) / total for w in member_weights]

    def call(self, inputs):
        return sum(w * x for w, x in zip(self.member_weights, inputs, strict=True))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return super().get_config() | {"member_weights": self.member_weights}


def assemble(members: Sequence[keras.Model], weights: Sequence[float], image_size: tuple[int, int]) -> keras.Model:
    """One model over raw uint8 images of any size; members with zero weight are left out."""
    kept = [(m, w) for m, w in zip(members, weights, strict=True) if w > 0]
    if not kept:
        raise ValueError("an ensemble needs at least one member with a positive weight")
    images = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    resized = ResizeImages(*image_size, name="resize")(images)
    outputs = [
        # Each member gets its own name (trained members share layer and model names), and runs in
        # inference mode even when the model is called directly: no augmentation, frozen batch norm.
        keras.Model(m.inputs, m.output, name=f"member_{i + 1}")(resized, training=False)
        for i, (m, _) in enumerate(kept)
    ]
    probs = WeightedAverage([w for _, w in kept], name="ensemble")(outputs) if len(kept) > 1 else outputs[0]
    return keras.Model(images, probs, name="skin_automl")


def export_model(model: keras.Model, out_dir: Path, card: dict, overwrite: bool = False) -> Path:
    """Write ``model.keras``, ``saved_model/`` and the model card (JSON and Markdown) into ``out_dir``."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir, overwrite=overwrite) as stage:
        staged = ModelLayout(stage)
        model.save(staged.keras_file)
        model.export(str(staged.saved_model), format="tf_saved_model", verbose=False)
        write_json(staged.card_json, card)
        atomic_write(staged.card_md, card_markdown(card))
    return out_dir


def read_card(model_dir: Path) -> dict:
    return ModelLayout(model_dir).read_card()


def card_markdown(card: dict) -> str:
    """A human-readable model card from its JSON form."""
    lines = [f"# {card.get('name', 'skin-automl model')}", "",
             f"Intended use: {card.get('intended_use', 'research only, not diagnosis')}.", ""]
    for key in ("task", "classes", "input", "image_size", "resize", "data_fingerprint", "split", "objective",
                "ensemble_method"):
        if key in card:
            value = card[key]
            lines.append(f"- **{key.replace('_', ' ')}**: "
                         f"{', '.join(map(str, value)) if isinstance(value, list) else value}")
    if card.get("members"):
        lines += ["", "| member | weight | search trial | seed |", "| --- | ---: | --- | ---: |"]
        lines += [f"| {m['member_id']} | {m['weight']:.2f} | {m['search_trial']} | {m['seed']} |"
                  for m in card["members"]]
    if "metrics" in card:
        ci = card.get("metrics_ci95", {})
        lines += ["", "| test metric | value | 95% bootstrap interval |", "| --- | ---: | --- |"]
        lines += [f"| {k.removeprefix('test_').replace('_', ' ')} | {v:.3f} | "
                  + (f"{ci[k][0]:.3f} to {ci[k][1]:.3f}" if k in ci else "-") + " |"
                  for k, v in card["metrics"].items()]
    if card.get("versions"):
        lines += ["", "Made with " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()) + "."]
    if card.get("search_spec"):
        lines += ["", "Search spec: `spec.yaml` of the run, also in `model_card.json` (`search_spec`)."]
    return "\n".join(lines) + "\n"


def export_run(run_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Export a run's ensemble (after retrain and ensemble) as one self-contained model folder."""
    import yaml

    from automl.data import RESIZE_METHOD
    from automl.files import check_output_dir

    run = RunLayout(run_dir)
    check_output_dir(out_dir, overwrite=overwrite)  # before minutes of loading and tracing
    info, summary, metrics = run.read_info(required=True), run.read_ensemble(), run.read_ensemble_metrics()
    members = run.read_members().set_index("member_id")
    chosen = [m for m, w in summary["weights"].items() if w > 0]
    models = [_load_member(run, m) for m in chosen]
    image_size = tuple(info["image_size"])
    model = assemble(models, [summary["weights"][m] for m in chosen], image_size)
    test, ci = metrics["ensemble"]["test"], metrics["ensemble"].get("test_ci95", {})
    card = {
        "name": f"skin-automl {run.name}",
        "intended_use": "research on dermoscopy image classification; not a medical device and not for diagnosis",
        "task": summary["task"],
        "classes": summary["classes"],
        "input": "raw uint8 RGB images of any size, batch of one size at a time (N, H, W, 3)",
        "image_size": list(image_size),
        "resize": RESIZE_METHOD,
        "data_fingerprint": info.get("data_fingerprint"),
        "split": summary["split"],
        "objective": str(Objective.from_record(summary.get("objective") or info)),
        "ensemble_method": summary["method"],
        "members": [
            {"member_id": m, "weight": summary["weights"][m], "search_trial": members.loc[m, "trial_id"],
             "seed": int(members.loc[m, "seed"])}
            for m in chosen
        ],
        "metrics": {f"test_{k}": test[k] for k in HEADLINE},
        "metrics_ci95": {f"test_{k}": v for k, v in ci.items()},
        "search_spec": yaml.safe_load(run.spec.read_text()) if run.spec.is_file() else None,
        "versions": _versions(),
    }
    return export_model(model, out_dir, card, overwrite=overwrite)


def _load_member(run: RunLayout, member_id: str) -> keras.Model:
    from automl.layout import RunFolderError

    path = run.member_model(run.member(member_id))
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; run automl retrain {run.name} again")
    try:
        return keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - a damaged .keras file raises zip, HDF5 or Keras errors
        raise RunFolderError(f"{path}: damaged ({str(exc).splitlines()[0][:200]}); "
                             f"run automl retrain {run.name} again") from None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("skin-automl", "tensorflow", "keras", "ray", "optuna", "numpy", "scikit-learn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
