"""The exported SavedModel in plain TensorFlow + PIL, against ``automl predict``, on files of three sizes.

    python benchmarks/savedmodel_check.py [MODEL_DIR]

The 202 pictures of ``../shared/data/ham10000_sample_150`` (150x112 files), and the same pictures resized to
200x150 and to 600x450 (HAM10000's original size), each written as JPEG files. For each size, ``automl predict``
classifies the files (in its own process) and the SavedModel of ``MODEL_DIR/saved_model`` (default
``results/reference/model``) classifies the same files here, where automl is deliberately not imported: the
model resizes in its graph, so it takes every size unchanged, and runs without the package. Prints and writes
``results/benchmarks/savedmodel_check-RUN.md`` (RUN: the model's run folder): per size, the largest probability
difference between the two and how often the predicted class agrees with the one at 150x112.
"""

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

assert "automl" not in sys.modules
# Paths from this file, not the working directory, so the check runs from anywhere in the checkout.
REPO = Path(__file__).resolve().parents[1]
MODEL = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "reference" / "model"
IMAGES = REPO.parent / "shared" / "data" / "ham10000_sample_150" / "HAM10000_images"
SIZES = ((150, 112), (200, 150), (600, 450))  # width x height, as files are described
OUT = REPO / "results" / "benchmarks" / f"savedmodel_check-{MODEL.resolve().parent.name}.md"


def read(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.uint8)


def main() -> None:
    sources = sorted(IMAGES.glob("*.jpg"))
    if not sources:  # without pictures every figure below would be a perfect 0: fail loudly instead
        sys.exit(f"no pictures in {IMAGES}")
    model = tf.saved_model.load(str(MODEL / "saved_model"))
    rows, first = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for width, height in SIZES:
            folder = Path(scratch) / f"{width}x{height}"
            folder.mkdir()
            for source in sources:
                picture = Image.open(source).convert("RGB")
                if picture.size != (width, height):
                    picture = picture.resize((width, height), Image.Resampling.BICUBIC)
                picture.save(folder / source.name, quality=95)
            preds = folder.with_suffix(".csv")
            subprocess.run([sys.executable, "-m", "automl", "predict", str(MODEL), str(folder), "--out", str(preds)],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            with open(preds, newline="") as handle:
                table = {r["image_id"]: r for r in csv.DictReader(handle) if not r["error"]}
            classes = [c.removeprefix("p_") for c in next(iter(table.values())) if c.startswith("p_")]
            worst, predicted = 0.0, {}
            for path in sorted(folder.glob("*.jpg")):
                probs = model.serve(tf.constant(read(path)[None]))[0].numpy()
                expected = np.array([float(table[path.stem][f"p_{c}"]) for c in classes])
                worst = max(worst, float(np.abs(probs - expected).max()))
                predicted[path.stem] = int(np.argmax(probs))
            first = first or predicted
            agree = np.mean([predicted[k] == first[k] for k in first])
            rows.append((f"{width}x{height}", len(table), worst, agree))
    lines = [f"SavedModel `{MODEL.relative_to(REPO) if MODEL.is_relative_to(REPO) else MODEL}` in plain TensorFlow "
             f"(automl imported: {'automl' in sys.modules}) against `automl predict`, {len(sources)} pictures of "
             "ham10000_sample_150 at each file size.", "",
             "| file size (WxH) | classified | max abs prob difference | same class as at 150x112 |",
             "|---|---|---|---|"]
    lines += [f"| {size} | {n} | {worst:.2e} | {agree:.1%} |" for size, n, worst, agree in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
