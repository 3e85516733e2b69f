"""Classify image files with an exported model folder; one CSV row per file, errors included.

Files are decoded by :func:`automl.data.decode_image` (as in training) and resized inside the
exported graph by the same function the training cache used, so predictions see exactly the
pixels a model was trained on.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from automl import console
from automl.data import IMAGE_SUFFIXES, decode_image
from automl.errors import UserError
from automl.export import MODEL_FILE, read_card
from automl.files import atomic_write


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every image file below each folder (sorted); missing paths kept to report."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(item)
    return files


def predict_files(model_dir: Path, inputs: Sequence[str | Path], out_csv: Path, batch_size: int = 64) -> pd.DataFrame:
    """Write ``image_id, dx_pred, p_<class>..., error`` for every input file; raise if none was readable."""
    import keras

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).is_file():
        raise UserError(f"{model_dir}: not an exported model folder (no {MODEL_FILE}); make one with automl export")
    classes = read_card(model_dir)["classes"]
    model = keras.saving.load_model(model_dir / MODEL_FILE)
    files = collect_inputs(inputs)
    if not files:
        raise UserError(f"no image files found in {', '.join(map(str, inputs))}")
    probs = np.full((len(files), len(classes)), np.nan)
    errors = [""] * len(files)
    with console.progress(len(files), f"classifying {len(files)} images") as advance:
        for start in range(0, len(files), batch_size):
            by_shape: dict[tuple, list[tuple[int, np.ndarray]]] = defaultdict(list)
            for i in range(start, min(start + batch_size, len(files))):
                try:
                    image = decode_image(files[i])
                except ValueError as exc:
                    errors[i] = str(exc)
                    continue
                by_shape[image.shape].append((i, image))
            # The graph resizes a batch at a time, so each batch holds images of one size.
            for group in by_shape.values():
                rows = [i for i, _ in group]
                probs[rows] = model(np.stack([image for _, image in group]), training=False).numpy()
            advance(min(start + batch_size, len(files)))
    table = _table(files, probs, errors, classes)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write(Path(out_csv), buffer.getvalue())
    readable = int((table["error"] == "").sum())
    console.info(f"wrote {out_csv}: {readable} of {len(files)} images classified, {len(files) - readable} with errors")
    if readable == 0:
        raise UserError(f"none of the {len(files)} inputs could be read as an image (see the error column of {out_csv})")
    return table


def _table(files: list[Path], probs: np.ndarray, errors: list[str], classes: list[str]) -> pd.DataFrame:
    ok = np.array([e == "" for e in errors])
    predicted = np.where(ok, np.array(classes, dtype=object)[np.nan_to_num(probs).argmax(axis=1)], "")
    table = pd.DataFrame({"image_id": [f.stem for f in files], "dx_pred": predicted})
    if classes == ["benign", "malignant"]:
        table["p_malignant"] = probs[:, 1]
    else:
        for k, name in enumerate(classes):
            table[f"p_{name}"] = probs[:, k]
    table["error"] = errors
    return table
