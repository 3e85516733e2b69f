"""The exported SavedModel in a fresh process, with plain TensorFlow + PIL only, against automl predict's CSV.

    python benchmarks/savedmodel_check.py [RUN_DIR]

Reads ``RUN_DIR/model/saved_model`` and ``RUN_DIR/preds_sample150.csv`` (written by ``automl predict``;
see ``results/reference/predict.md``; RUN_DIR defaults to ``results/reference``) and the pictures of
``../shared/data/ham10000_sample_150``. automl is deliberately not imported: the point is that the
SavedModel runs without it.
"""

import csv
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

assert "automl" not in sys.modules
# Paths from this file, not the working directory, so the check runs from anywhere in the checkout.
REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "reference"
IMAGES = REPO.parent / "shared" / "data" / "ham10000_sample_150" / "HAM10000_images"

model = tf.saved_model.load(str(REFERENCE / "model" / "saved_model"))
with open(REFERENCE / "preds_sample150.csv", newline="") as handle:
    rows = {r["image_id"]: r for r in csv.DictReader(handle) if not r["error"]}
classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
paths = sorted(IMAGES.glob("*.jpg"))
# Without pictures the loop would print a perfect 0 difference: fail loudly instead.
if not paths:
    sys.exit(f"no pictures in {IMAGES}")
worst = 0.0
for path in paths:
    image = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.uint8)
    probs = model.serve(tf.constant(image[None]))[0].numpy()
    expected = np.array([float(rows[path.stem][f"p_{c}"]) for c in classes])
    worst = max(worst, float(np.abs(probs - expected).max()))
print(f"{len(rows)} images, max |SavedModel - automl predict| = {worst:.2e}, "
      f"automl imported: {'automl' in sys.modules}")
