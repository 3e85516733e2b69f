# Fresh process, plain TensorFlow + PIL only (no automl import): the exported SavedModel vs automl predict's CSV.
import sys, csv, numpy as np, tensorflow as tf
from pathlib import Path
from PIL import Image, ImageOps
assert "automl" not in sys.modules
model = tf.saved_model.load("results/reference/model/saved_model")
rows = {r["image_id"]: r for r in csv.DictReader(open("results/reference/preds_sample150.csv")) if not r["error"]}
classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
worst = 0.0
for path in sorted(Path("../shared/data/ham10000_sample_150/HAM10000_images").glob("*.jpg")):
    image = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.uint8)
    probs = model.serve(tf.constant(image[None]))[0].numpy()
    expected = np.array([float(rows[path.stem][f"p_{c}"]) for c in classes])
    worst = max(worst, float(np.abs(probs - expected).max()))
print(f"{len(rows)} images, max |SavedModel - automl predict| = {worst:.2e}, automl imported: {'automl' in sys.modules}")
