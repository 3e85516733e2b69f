"""Classify image files with an exported model folder; one CSV row per file, errors included.

Files are decoded by :func:`automl.data.decode_image` (as in training) and resized inside the
exported graph by the same function the training cache used, so predictions see exactly the
pixels a model was trained on.
"""

from __future__ import annotations

import io
import weakref
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from automl import console
from automl.data import BINARY_CLASSES, decode_image, scan_images, skipped_line
from automl.errors import UserError
from automl.files import atomic_write
from automl.layout import ModelLayout


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every image file below each folder (sorted: :func:`automl.data.scan_images`), each path
    once. The other files of a folder are counted and named in one line on the console, never dropped silently.

    Broken or looping symbolic links below a folder are kept, so they get an error row rather than vanishing.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            scan = scan_images(item)
            files += scan.files
            if line := skipped_line(scan.others):
                console.info(f"{item}: {line}")
        else:
            files.append(item)
    return list(dict.fromkeys(files))  # a file named twice (e.g. a folder and a file in it) gets one row


def predict_files(model_dir: Path, inputs: Sequence[str | Path], out_csv: Path, batch_size: int = 64) -> pd.DataFrame:
    """Write ``image_id, path, dx_pred, p_<class>..., error`` for every input file; raise if none was readable.

    ``image_id`` is the file name without its suffix (the ISIC id), ``path`` the file as given or found, one row
    per path. Bad arguments (``out_csv`` a folder, a damaged model folder) are a :class:`UserError` before any
    image is read.
    """
    model_dir, out_csv = Path(model_dir), Path(out_csv)
    if out_csv.is_dir():
        raise UserError(f"{out_csv}: is a folder; --out names the CSV file to write, e.g. {out_csv / 'preds.csv'}")
    if out_csv.parent.exists() and not out_csv.parent.is_dir():
        raise UserError(f"{out_csv}: {out_csv.parent} is a file, not a folder; choose another --out")
    table = classify_files(model_dir, inputs, batch_size)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write(out_csv, buffer.getvalue())
    readable = int((table["error"] == "").sum())
    console.info(f"wrote {out_csv}: {readable} of {len(table)} images classified, {len(table) - readable} with errors")
    if readable == 0:
        raise UserError(f"none of the {len(table)} inputs could be read as an image "
                        f"(see the error column of {out_csv})")
    return table


def classify_files(model_dir: Path, inputs: Sequence[str | Path], batch_size: int = 64) -> pd.DataFrame:
    """The table :func:`predict_files` writes, without writing it: one row per input file, unreadable ones with
    their error. A folder that is not an exported model is a :class:`UserError` before any image is read.
    """
    model_dir = Path(model_dir)
    classes = model_classes(model_dir)
    files = collect_inputs(inputs)
    if not files:
        raise UserError(f"no image files found in {', '.join(map(str, inputs))}")
    return classify_with(load_model(model_dir, len(classes)), files, classes, batch_size)


def classify_with(model, files: Sequence[Path], classes: Sequence[str], batch_size: int = 64) -> pd.DataFrame:
    """:func:`classify_files`' table for a model already loaded (an exported graph: raw uint8 images of any size)."""
    probs = np.full((len(files), len(classes)), np.nan)
    errors = [""] * len(files)
    with console.progress(len(files), f"classifying {len(files)} images") as advance:
        for start in range(0, len(files), batch_size):
            rows, images = [], []
            for i in range(start, min(start + batch_size, len(files))):
                try:
                    images.append(decode_image(files[i]))
                except ValueError as exc:
                    errors[i] = str(exc)
                    continue
                rows.append(i)
            if images:
                probs[rows] = classify_images(model, images)
            advance(min(start + batch_size, len(files)))
    return _table(files, probs, errors, classes)


def classify_images(model, images: Sequence[np.ndarray]) -> np.ndarray:
    """The (N, n_classes) probabilities of decoded images (:func:`automl.data.decode_image`'s arrays, any sizes)
    from a loaded exported graph; ``automl serve`` calls it on the images its requests bring together."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_shape[image.shape].append(i)
    probs = np.empty((len(images), model.output_shape[-1]))
    call = _compiled(model)
    # The graph resizes a batch at a time, so each batch holds images of one size.
    for rows in by_shape.values():
        probs[rows] = call(np.stack([images[i] for i in rows]))
    return probs


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model):
    """The model's forward pass as one TensorFlow function, made once per model: on the ensembles' many small layers
    Keras's eager call spends most of its time in Python (measured 3-5x slower at batches of 1 to 64, outputs within
    2e-7). Traced once (about 2 s for the reference ensemble) for uint8 batches of any length and image size."""
    if model not in _COMPILED:
        import tensorflow as tf

        held = weakref.ref(model)  # a strong reference in the value would keep the key, and the model, forever
        forward = tf.function(lambda batch: held()(batch, training=False),
                              input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8)])
        _COMPILED[model] = lambda batch: forward(tf.convert_to_tensor(batch, tf.uint8)).numpy()
    return _COMPILED[model]


def probabilities(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """The (N, n_classes) probabilities of a table :func:`classify_files` made (NaN on error rows)."""
    if list(classes) == list(BINARY_CLASSES):
        malignant = table["p_malignant"].to_numpy(dtype=np.float64)
        return np.stack([1 - malignant, malignant], axis=1)
    return table[[f"p_{name}" for name in classes]].to_numpy(dtype=np.float64)


def model_classes(model_dir: Path) -> list[str]:
    """The class names of an exported model folder's card; a UserError if the folder is not one (no model file, a
    missing or damaged card), naming the file and what is wrong with it.
    """
    layout = ModelLayout(model_dir)
    if not layout.keras_file.is_file():
        raise UserError(f"{model_dir}: not an exported model folder (no {layout.keras_file.name}); "
                        "make one with automl export")
    card = layout.read_card()  # a missing or damaged card is one line naming it
    classes = card.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{layout.card_json}: field classes must be a list of at least two class names; "
                        "export the model again with automl export")
    return classes


def load_model(model_dir: Path, n_classes: int):
    """The Keras model of an exported folder, or a UserError naming the file when it cannot be loaded."""
    import keras

    import automl.export  # registers the exported graph's own layers (resize, ensemble)
    import automl.model  # noqa: F401 - and the members' (a binary model's two-column output)

    path = ModelLayout(model_dir).keras_file
    if not zipfile.is_zipfile(path):  # Keras's own message for this says "File not found"
        raise UserError(f"{path}: not a Keras model file (a .keras file is a zip archive); export the model again")
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types (ValueError, KeyError, ...) for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: cannot load the model ({first}); export the model again") from None
    outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if outputs != n_classes:
        raise UserError(f"{path}: the model outputs {outputs} classes but {ModelLayout(model_dir).card_json} lists "
                        f"{n_classes}")
    return model


def _table(files: list[Path], probs: np.ndarray, errors: list[str], classes: list[str]) -> pd.DataFrame:
    ok = np.array([e == "" for e in errors])
    predicted = np.where(ok, np.array(classes, dtype=object)[np.nan_to_num(probs).argmax(axis=1)], "")
    table = pd.DataFrame({"image_id": [f.stem for f in files], "path": [str(f) for f in files], "dx_pred": predicted})
    if list(classes) == list(BINARY_CLASSES):
        table["p_malignant"] = probs[:, 1]
    else:
        for k, name in enumerate(classes):
            table[f"p_{name}"] = probs[:, k]
    table["error"] = errors
    return table
