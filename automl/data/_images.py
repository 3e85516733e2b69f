"""Image files: found anywhere below the data folder, decoded to RGB, resized one documented way.

Resizing is bilinear with antialiasing (TensorFlow's ``tf.image.resize(..., antialias=True)``),
rounded to whole uint8 values. Of PIL's and TensorFlow's filters this matches MedMNIST's 28px
DermaMNIST pictures best. :func:`resize_tensor` is the one definition: the decode cache uses it, and
the exported model's preprocessing layer calls the same function, so training and prediction
cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RESIZE_METHOD = "bilinear, antialiased (tf.image.resize antialias=True), rounded to uint8"


def index_images(data_dir: Path) -> dict[str, Path]:
    """Map each image stem (the ISIC image_id) to its file, searching every folder below ``data_dir``.

    The public release splits images over ``HAM10000_images_part_1`` and ``_part_2``; others merge
    them into ``HAM10000_images``. Where one id appears twice, the first path in sorted order wins.
    """
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES and stem not in found:
                found[stem] = Path(root) / name
    return found


def decode_image(path: Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array; raises ``ValueError`` saying why it is unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise ValueError("missing") from None
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt: {exc}") from None


def resize_tensor(images, size: tuple[int, int]):
    """Resize an image or a batch (uint8 or float, 0-255) to ``size`` = (height, width).

    Returns float32 holding whole numbers in [0, 255]: exactly what the cache stores as uint8.
    Written with TensorFlow ops so the exported model can call it inside its graph.
    """
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    resized = tf.image.resize(images, size, method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One decoded image resized to ``size`` as uint8 (unchanged when it already has that size)."""
    if image.shape[:2] == tuple(size):
        return image
    return resize_tensor(image, size).numpy().astype(np.uint8)


def load_images(
    paths: Iterable[Path], size: tuple[int, int], progress=None
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode and resize files in parallel.

    Returns the (N, H, W, 3) uint8 array (zeros where a file failed) and ``{position: reason}`` for
    the failures. ``progress`` is called with the count done, for progress bars.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)
    out = np.zeros((len(paths), *size, 3), dtype=np.uint8)
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = resize_image(decode_image(paths[i]), size)
        except ValueError as exc:
            failures[i] = str(exc)

    # PIL's decoder and TensorFlow's kernels release the GIL, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if progress is not None:
                progress(done)
    return out, failures
