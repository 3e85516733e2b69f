"""Self-contained models: raw uint8 RGB images of any size in, class probabilities out.

:func:`assemble` wraps one or more trained members into one Keras graph: a resize layer that
calls :func:`automl.data.resize_tensor` (the very function the training cache used), every
member averaged over its test-time views, the prior correction per member (decision ``prior``),
the weighted average of their probabilities and the temperature, each layer calling the one
definition in :mod:`automl.posthoc` that the ensemble stage measured. :func:`export_model` writes it
as a ``.keras`` file and as a TensorFlow SavedModel that plain TensorFlow loads without this package::

    import tensorflow as tf
    model = tf.saved_model.load("MODEL_DIR/saved_model")
    probs = model.serve(tf.constant(image_uint8[None]))   # (1, n_classes)
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import keras

import automl.model  # noqa: F401 - registers the members' own layers (colour constancy, ...) for loading them
from automl import posthoc
from automl.data import resize_tensor
from automl.files import atomic_write, staged_dir, write_json
from automl.layout import ModelLayout, RunFolderError, RunLayout, hp_column, json_object, member_image_size
from automl.objective import HEADLINE, Objective
from automl.stages import DECISION


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


@keras.saving.register_keras_serializable(package="automl")
class TTAViews(keras.layers.Layer):
    """A batch (N, H, W, 3) to its test-time views stacked view-major, (V * N, H, W, 3) (:func:`posthoc.views`)."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        return keras.ops.concatenate(posthoc.views(images, self.mode), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])  # the views are square when they turn, so H and W keep their sizes

    def get_config(self):
        return super().get_config() | {"mode": self.mode}


@keras.saving.register_keras_serializable(package="automl")
class ViewMean(keras.layers.Layer):
    """A member's probabilities on (V * N) stacked views back to (N, K): the mean over its ``views`` views."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, probs):
        return keras.ops.mean(keras.ops.reshape(probs, (self.views, -1, probs.shape[-1])), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self):
        return super().get_config() | {"views": self.views}


@keras.saving.register_keras_serializable(package="automl")
class PriorCorrection(keras.layers.Layer):
    """One member's probabilities times its training prior / effective class mix, renormalised
    (:func:`posthoc.correct_prior`)."""

    def __init__(self, factor: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.factor = [float(f) for f in factor]

    def call(self, probs):
        return posthoc.correct_prior(probs, keras.ops.convert_to_tensor(self.factor, dtype=probs.dtype), xp=keras.ops)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"factor": self.factor}


@keras.saving.register_keras_serializable(package="automl")
class Temperature(keras.layers.Layer):
    """The ensemble's probabilities at a temperature fitted on validation (:func:`posthoc.apply_temperature`)."""

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probs):
        return posthoc.apply_temperature(probs, self.temperature, xp=keras.ops)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"temperature": self.temperature}


def assemble(
    members: Sequence[keras.Model],
    weights: Sequence[float],
    image_size: tuple[int, int],
    tta: str = "none",
    prior_factors: Sequence[Sequence[float]] | None = None,
    temperature: float = 1.0,
) -> keras.Model:
    """One model over raw uint8 images of any size: resize, each member averaged over its ``tta`` views, its
    prior correction (given ``prior_factors``, one per member), the weighted average, the ``temperature``.
    Members with zero weight are left out."""
    if tta not in posthoc.tta_modes(image_size):
        raise ValueError(f"TTA mode {tta!r} needs a square input; use one of {posthoc.tta_modes(image_size)}")
    factors = [None] * len(members) if prior_factors is None else list(prior_factors)
    kept = [(m, w, f) for m, w, f in zip(members, weights, factors, strict=True) if w > 0]
    if not kept:
        raise ValueError("an ensemble needs at least one member with a positive weight")
    images = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    resized = ResizeImages(*image_size, name="resize")(images)
    views = resized if tta == "none" else TTAViews(tta, name="tta_views")(resized)  # made once, shared by members
    outputs = []
    for i, (member, _, factor) in enumerate(kept):
        # Each member gets its own name (trained members share layer and model names), and runs in
        # inference mode even when the model is called directly: no augmentation, frozen batch norm.
        probs = keras.Model(member.inputs, member.output, name=f"member_{i + 1}")(views, training=False)
        if tta != "none":
            probs = ViewMean(posthoc.VIEW_COUNT[tta], name=f"member_{i + 1}_tta")(probs)
        if factor is not None:
            probs = PriorCorrection(factor, name=f"member_{i + 1}_prior")(probs)
        outputs.append(probs)
    probs = WeightedAverage([w for _, w, _ in kept], name="ensemble")(outputs) if len(kept) > 1 else outputs[0]
    if temperature != 1.0:
        probs = Temperature(temperature, name="temperature")(probs)
    return keras.Model(images, probs, name="skin_automl")


def export_model(model: keras.Model, out_dir: Path, card: dict, overwrite: bool = False) -> Path:
    """Write ``model.keras``, ``saved_model/`` and the model card (JSON and Markdown) into ``out_dir``."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir, overwrite=overwrite) as stage:
        staged = ModelLayout(stage)
        model.save(staged.keras_file)
        _deflate(staged.keras_file)
        write_saved_model(model, staged.saved_model)
        write_json(staged.card_json, card)
        atomic_write(staged.card_md, card_markdown(card))
    return out_dir


def _deflate(keras_file: Path) -> None:
    """Re-pack a ``.keras`` file (a zip that Keras writes uncompressed) with deflate: its float32 weights shrink by
    about a tenth (15.3 to 13.6 MB for the 4-ResNet ensemble of ``results/reference-mixed``), and Keras loads it
    the same way. The staged folder is not yet visible, so rewriting in place is safe."""
    packed = keras_file.with_suffix(".deflated")
    with zipfile.ZipFile(keras_file) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            with source.open(entry) as data, target.open(entry.filename, "w") as out:
                shutil.copyfileobj(data, out, 1 << 20)
    packed.replace(keras_file)


def write_saved_model(model: keras.Model, path: Path) -> None:
    """``model`` as a TensorFlow SavedModel whose endpoint ``serve`` takes its one input, each weight stored once.

    Not ``model.export``: it stores every variable twice on the TensorFlow backend (Keras 3.15, keras-team/keras
    #23553: once as the ``keras.Variable`` it tracks, once as the ``tf.Variable`` the endpoint captures), which
    doubled the size of an exported ensemble (29.4 MB for 14.7 MB of weights). Without ``track``, the export
    archive stores what the endpoint uses: every weight inference reads, once. The signature's input keeps the
    model input's name (``image``), as ``model.export`` named it.
    """
    import tensorflow as tf

    (image,) = model.inputs
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", lambda images: model(images, training=False),
                         input_signature=[tf.TensorSpec(image.shape, image.dtype, name=image.name)])
    archive.write_out(str(path), verbose=False)


def read_card(model_dir: Path) -> dict:
    return ModelLayout(model_dir).read_card()


def card_markdown(card: dict) -> str:
    """A human-readable model card from its JSON form."""
    lines = [f"# {card.get('name', 'skin-automl model')}", "",
             f"Intended use: {card.get('intended_use', 'research only, not diagnosis')}.", ""]
    for key in ("task", "classes", "input", "image_size", "search_image_size", "resize", "training_data",
                "data_fingerprint", "split", "trained_on", "objective", "ensemble_method", "tta", "decision",
                "temperature"):
        if key in card:
            value = card[key]
            lines.append(f"- **{key.replace('_', ' ')}**: "
                         f"{', '.join(map(str, value)) if isinstance(value, list) else value}")
    if "parameters" in card:
        lines.append(f"- **parameters**: {card['parameters']:,}" + (f" in {len(card['members'])} members"
                                                                    if len(card.get("members") or []) > 1 else ""))
    if card.get("members"):
        sized = all("parameters" in m for m in card["members"])  # cards exported before parameters were counted
        lines += ["", "| member | family | weight | search trial | seed |" + " parameters |" * sized,
                  "| --- | --- | ---: | --- | ---: |" + " ---: |" * sized]
        lines += [f"| {m['member_id']} | {' '.join(filter(None, [m.get('family', 'cnn'), m.get('backbone')]))} "
                  f"| {m['weight']:.2f} | {m['search_trial']} | {m['seed']} |"
                  + (f" {m['parameters']:,} |" if sized else "") for m in card["members"]]
    if "metrics" in card:
        ci = card.get("metrics_ci95", {})
        lines += ["", "| test metric | value | 95% bootstrap interval |", "| --- | ---: | --- |"]
        lines += [f"| {k.removeprefix('test_').replace('_', ' ')} | {v:.3f} | "
                  + (f"{ci[k][0]:.3f} to {ci[k][1]:.3f}" if k in ci else "-") + " |"
                  for k, v in card["metrics"].items()]
    if card.get("calibration"):
        lines += ["", "Calibration on the test split (the temperature changes no prediction, only the probabilities):",
                  "", "| test split | log loss | ECE (15 bins, top label) | Brier score |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {when.removeprefix('test_').replace('_', ' ')} | {m['loss']:.3f} | {m['ece']:.3f} | "
                  f"{m['brier']:.3f} |" for when, m in card["calibration"].items()]
    if card.get("external_evaluations"):
        lines += ["", "External evaluations (`automl evaluate`, in `evaluations/`; they measure, never choose):", "",
                  "| data | images scored | melanoma vs rest AUC | malignant vs benign AUC | balanced accuracy * |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {e['name']} | {e['scored']} | {_with_interval(e['melanoma_auc'])} | "
                  f"{_with_interval(e['malignant_auc'])} | {_with_interval(e['balanced_accuracy'])} |"
                  for e in card["external_evaluations"]]
        lines += ["", "\\* over the model's classes present in that set."]
    if card.get("versions"):
        lines += ["", "Made with " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()) + "."]
    if card.get("search_spec"):
        lines += ["", "Search spec: `spec.yaml` of the run, also in `model_card.json` (`search_spec`)."]
    return "\n".join(lines) + "\n"


def _with_interval(value: dict) -> str:
    low, high = value.get("ci95") or (None, None)
    return f"{value['value']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def record_evaluations(model_dir: Path) -> dict:
    """Write the headline figures of every evaluation in ``MODEL_DIR/evaluations/`` into the model card (JSON and
    Markdown), so that the card a user reads says how the model held up on data kept outside the project."""
    layout = ModelLayout(model_dir)
    card, found = layout.read_card(), []
    for name in layout.evaluation_names():
        try:
            metrics = json_object(layout.evaluation(name).metrics)
        except (OSError, ValueError):
            continue  # an evaluation folder being written, or not ours: nothing to report from it

        def headline(section: str, key: str = "auc") -> dict:
            part = metrics.get(section) or {}
            return {"value": part.get(key), "ci95": (part.get("ci95") or {}).get(key)}

        found.append({"name": name, "data": metrics.get("data"), "created": metrics.get("created"),
                      "scored": (metrics.get("images") or {}).get("scored"), "melanoma_auc": headline("melanoma"),
                      "malignant_auc": headline("malignant"),
                      "balanced_accuracy": headline("multiclass", "balanced_accuracy")})
    card["external_evaluations"] = found
    write_json(layout.card_json, card)
    atomic_write(layout.card_md, card_markdown(card))
    return card


def export_run(run_dir: Path, out_dir: Path, overwrite: bool = False, refit: bool = False) -> Path:
    """Export a run's ensemble (after retrain and ensemble) as one self-contained model folder.

    The graph applies what the ensemble stage chose on validation (weights, TTA mode, temperature) and the
    decision rule it was run with. With ``refit`` the members are the ones ``automl retrain --refit`` trained
    on train+val, with those same choices, each with its own prior factor (its own training data's).
    """
    from automl.files import check_output_dir

    run = RunLayout(run_dir)
    check_output_dir(out_dir, overwrite=overwrite)  # before minutes of loading and tracing
    info, summary, metrics = run.read_info(required=True), run.read_ensemble(), run.read_ensemble_metrics()
    chosen = [m for m, w in summary["weights"].items() if w > 0]
    shipped = metrics["ensemble"]
    if refit:
        shipped = metrics.get("refit_ensemble") or {}
        if shipped.get("members") != chosen:
            raise RunFolderError(f"{run.ensemble_metrics}: no refit of this ensemble's members; "
                                 f"run automl retrain {run.name} --refit first (it adds the refit to the report)")
    model, factors = assemble_run(run, refit=refit)
    members = run.read_members(refit=refit)
    card = _card(run, info, summary, members.set_index("member_id"), chosen, shipped, factors, refit, model)
    return export_model(model, out_dir, card, overwrite=overwrite)


def assemble_run(run: RunLayout, refit: bool = False, tta: str | None = None, decision: str | None = None,
                 temperature: float | None = None) -> tuple[keras.Model, dict | None]:
    """A run's ensemble as one graph (and each member's prior factor, for the decision ``prior``), with what the
    ensemble stage chose on validation; ``tta``, ``decision`` or ``temperature`` given replace its choice (for
    measuring each post-hoc lever apart, as ``benchmarks/posthoc_levers.py`` does)."""
    info, summary = run.read_info(required=True), run.read_ensemble()
    chosen = [m for m, w in summary["weights"].items() if w > 0]
    members = run.read_members(refit=refit)
    factors = None
    if (decision or summary.get("decision", DECISION)) == "prior":
        factors = posthoc.prior_factors(members, run.refit_members if refit else run.members)
    models = [_load_member(run, m, refit) for m in chosen]
    model = assemble(models, [summary["weights"][m] for m in chosen], member_image_size(info),
                     tta=tta or summary.get("tta", "none"),
                     prior_factors=[factors[m] for m in chosen] if factors else None,
                     temperature=float(temperature or summary.get("temperature") or 1.0))
    return model, factors


def _card(run: RunLayout, info: dict, summary: dict, members, chosen: list[str], shipped: dict,
          factors: dict | None, refit: bool, model: keras.Model) -> dict:
    """The model card: what the model is, how it was chosen and trained, its size (counted in the shipped
    ``model``), and what it scored on test."""
    import yaml

    from automl.data import RESIZE_METHOD

    test, ci = shipped["test"], shipped.get("test_ci95", {})
    calibration = (shipped.get("calibration") or {}).get("test") or {}
    return {
        "name": f"skin-automl {run.name}",
        "intended_use": "research on dermoscopy image classification; not a medical device and not for diagnosis",
        "task": summary["task"],
        "classes": summary["classes"],
        "input": "raw uint8 RGB images of any size, batch of one size at a time (N, H, W, 3)",
        "image_size": list(member_image_size(info)),
        "search_image_size": list(info["image_size"]),
        "resize": RESIZE_METHOD,
        "data_fingerprint": info.get("data_fingerprint"),
        "training_data": TRAINING_DATA,
        "split": summary["split"],
        "trained_on": "train+val (refit; choices carried over from the validation run)" if refit else "train",
        "objective": str(Objective.from_record(summary.get("objective") or info)),
        "ensemble_method": summary["method"],
        "tta": summary.get("tta", "none"),
        "decision": summary.get("decision", DECISION),
        "temperature": float(summary.get("temperature") or 1.0),
        "members": [
            {"member_id": m, "weight": summary["weights"][m], "search_trial": members.loc[m, "trial_id"],
             "seed": int(members.loc[m, "seed"]), "epochs": int(members.loc[m, "epochs"])}
            | ({} if refit else {"best_epoch": int(members.loc[m, "best_epoch"])})  # the epoch whose weights ship
            | member_family(members.loc[m])
            | ({"prior_factor": [float(f) for f in factors[m]]} if factors else {})
            # assemble names the members' sub-models member_1, member_2... in chosen order
            | {"parameters": int(model.get_layer(f"member_{i + 1}").count_params())}
            for i, m in enumerate(chosen)
        ],
        "parameters": int(model.count_params()),
        "metrics": {f"test_{k}": test[k] for k in HEADLINE},
        "metrics_ci95": {f"test_{k}": v for k, v in ci.items()},
        "calibration": {f"test_{when}_temperature": values for when, values in calibration.items()},
        "search_spec": yaml.safe_load(run.spec.read_text()) if run.spec.is_file() else None,
        "versions": _versions(),
    }


#: What the card says of the training data and its terms: runs read HAM10000's public layout, and the HAM10000
#: images are published under CC BY-NC 4.0, whose non-commercial terms a user of the model needs to know.
TRAINING_DATA = ("HAM10000 layout (HAM10000: Tschandl, Rosendahl & Kittler, Sci. Data 2018, doi:10.7910/DVN/DBW86T; "
                 "licence CC BY-NC 4.0, non-commercial: check its terms before any other use of this model)")


def member_family(row) -> dict:
    """A member's model family from its ``hp_*`` columns, and its backbone if it has one (a mixed ensemble's
    card says which member is which); runs from before the families were all ``cnn``."""
    family, backbone = row.get(hp_column("family")), row.get(hp_column("backbone"))
    family = family if isinstance(family, str) else "cnn"
    return {"family": family} | ({"backbone": backbone} if family == "backbone" and isinstance(backbone, str) else {})


def _load_member(run: RunLayout, member_id: str, refit: bool = False) -> keras.Model:
    again = f"run automl retrain {run.name}{' --refit' if refit else ''} again"
    path = run.member_model(run.member(member_id, refit))
    if not path.is_file():
        raise RunFolderError(f"{path}: missing; {again}")
    try:
        member = keras.saving.load_model(path, compile=False)  # inference only: no optimizer state in the export
    except Exception as exc:  # noqa: BLE001 - a damaged .keras file raises zip, HDF5 or Keras errors
        raise RunFolderError(f"{path}: damaged ({str(exc).splitlines()[0][:200]}); {again}") from None
    return float32_model(member)


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` computing in float32, whatever precision trained it: the same architecture and weights, its layers
    made again from its config with every mixed dtype policy (``training.precision``) replaced by float32. An
    export, and everything served from it, then computes as a float32-trained model's does on any device (a CPU
    has no fast float16, and float16 sums of an ensemble round); its weights were float32 all along (Keras keeps
    variables in float32 under mixed policies). A float32 model is returned as it is."""
    if all(_policy_name(layer) == "float32" for layer in _layers(model)):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    rebuilt = keras.saving.deserialize_keras_object(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):  # a backbone: a model inside the model
            yield from _layers(layer)


def _policy_name(layer) -> str:
    return layer.dtype_policy.name


def _float32_config(config):
    """A serialized model's config with each mixed dtype policy (``{"class_name": "DTypePolicy", "config": {"name":
    "mixed_..."}}``) made float32; other dtypes (the uint8 or float32 of an input) stay."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name")).startswith("mixed"):
            return config | {"config": config["config"] | {"name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("skin-automl", "tensorflow", "keras", "ray", "optuna", "numpy", "scikit-learn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
