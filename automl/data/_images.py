"""Image files: found anywhere below the data folder, decoded to RGB, resized one documented way.

Resizing is bilinear with antialiasing (TensorFlow's ``tf.image.resize(..., antialias=True)``),
rounded to whole uint8 values. Of PIL's and TensorFlow's filters this matches MedMNIST's 28px
DermaMNIST pictures best. :func:`resize_tensor` is the one definition: the decode cache uses it, and
the exported model's preprocessing layer calls the same function, so training and prediction
cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_METHOD = "bilinear, antialiased (tf.image.resize antialias=True), rounded to uint8"


def _readable_suffixes() -> tuple[str, ...]:
    """The file suffixes of every format Pillow can open here (JPEG, PNG, TIFF, BMP, WebP, ...), less the
    stub formats whose pixels Pillow cannot decode without an outside handler (HDF5, GRIB, BUFR, ...)."""
    from PIL import ImageFile

    Image.init()

    def decodes(name: str) -> bool:
        opener = Image.OPEN.get(name, (None,))[0]  # an ImageFile class, or a factory function (JPEG's)
        return opener is not None and not (isinstance(opener, type) and issubclass(opener, ImageFile.StubImageFile))

    return tuple(sorted(suffix for suffix, name in Image.registered_extensions().items() if decodes(name)))


#: Suffixes (lower case) of the files a folder scan takes as images.
IMAGE_SUFFIXES = _readable_suffixes()


@dataclass
class ImageScan:
    """What a folder scan found: the image files (sorted as walked), and every other file with why it is not one."""

    files: list[Path] = field(default_factory=list)
    others: dict[Path, str] = field(default_factory=dict)

    def by_id(self) -> tuple[dict[str, Path], dict[Path, str]]:
        """Each image id's (file stem's) file, and the files passed over because an earlier one has their id."""
        found: dict[str, Path] = {}
        repeated: dict[Path, str] = {}
        for path in self.files:
            if path.stem in found:
                repeated[path] = f"same image id as {found[path.stem]}"
            else:
                found[path.stem] = path
        return found, repeated


def skipped_line(skipped: dict[Path, str], limit: int = 5) -> str | None:
    """One line counting the files a scan passed over and naming the first ``limit`` with why; None if none."""
    if not skipped:
        return None
    first = "; ".join(f"{path.name} ({why})" for path, why in list(skipped.items())[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} file(s): {first}{more}"


def scan_images(data_dir: Path) -> ImageScan:
    """Every file below ``data_dir``, sorted folder by folder: those whose suffix is an image format Pillow reads
    (:data:`IMAGE_SUFFIXES`) are images, the others are named with their suffix. Hidden files and folders (``.name``)
    are not looked at."""
    scan = ImageScan()
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                scan.files.append(path)
            else:
                scan.others[path] = f"{path.suffix or 'no suffix'} is not an image format Pillow reads"
    return scan


def index_images(data_dir: Path) -> dict[str, Path]:
    """Map each image stem (the ISIC image_id) to its file, searching every folder below ``data_dir``.

    The public release splits images over ``HAM10000_images_part_1`` and ``_part_2``; others merge
    them into ``HAM10000_images``. Where one id appears twice, the first path in sorted order wins.
    """
    return scan_images(data_dir).by_id()[0]


def decode_image(path: Path | BinaryIO) -> np.ndarray:
    """An image file (or a binary file object: an upload's bytes in ``io.BytesIO``) as an (H, W, 3) uint8 RGB array;
    raises ``ValueError`` saying why it is unreadable.

    Every colour mode PIL opens is converted without clipping, after the EXIF orientation is applied:

    - 8-bit modes (greyscale, palette, RGB, CMYK, YCbCr, LAB, HSV) as PIL converts them to RGB.
    - 16-bit greyscale (``I;16`` and its byte orders): divided by 257, so 65535 becomes 255.
    - 32-bit integer (``I``): as 16-bit when every value is within 0-65535 (PIL hands 16-bit PNG and TIFF data over
      in this mode too); otherwise the image's own range, its minimum to 0 and its maximum to 255.
    - 32-bit float (``F``): the image's own range, minimum to 0 and maximum to 255 (float files have no agreed
      scale); NaN or infinite values are an error. A constant image of either kind becomes black.
    - Transparency (``RGBA``, ``LA``, ``PA``, palette or greyscale/RGB with a transparent colour) is composited
      over black: the area outside a dermatoscope's round field of view is black in ordinary dermoscopy photos, so a
      cut-out lesion looks like the images the models were trained on.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ValueError("broken symbolic link" if os.path.islink(path) else "missing") from None
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large: {exc}") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (a folder, no permission, a symlink loop), not PIL's
            raise ValueError(f"cannot read: {exc.strerror}") from None
        raise ValueError(f"corrupt: {exc}") from None
    except MemoryError:
        raise  # this machine's limit, not the file's fault
    except Exception as exc:  # noqa: BLE001 - PIL's parsers raise many types on damaged files (struct.error, ...)
        raise ValueError(f"corrupt: {type(exc).__name__}: {exc}") from None
    if image.width == 0 or image.height == 0:
        raise ValueError("empty: the image has no pixels")
    return _to_rgb(image)


_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode == "F" and not np.isfinite(values).all():
            raise ValueError("float image with NaN or infinite values")
        lo, hi = values.min(), values.max()
        if mode != "F" and lo >= 0 and hi <= 65535:
            grey = values / 257
        else:
            grey = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
        rgb = np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=2)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int) and mode != "F":  # a 16-bit PNG's tRNS: one grey value means "transparent"
            rgb[np.asarray(image) == transparent] = 0
        return rgb
    if mode in _ALPHA_MODES or (mode in _PLAIN_MODES and "transparency" in image.info):
        straight = image.convert("LA") if mode == "La" else image  # PIL converts premultiplied La only to LA
        rgba = np.asarray(straight.convert("RGBA"), dtype=np.float64)
        # Over black: each colour times its opacity. A product over 255 is never exactly a half, so rounding is exact.
        return np.round(rgba[..., :3] * rgba[..., 3:] / 255).astype(np.uint8)
    if mode in _PLAIN_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise ValueError(f"unsupported colour mode {mode}")


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
    paths: Sequence[Path | None], size: tuple[int, int], out: np.ndarray | None = None, progress=None
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode and resize files in parallel, each straight into its row of ``out``.

    ``out`` is an (N, H, W, 3) uint8 array for the N paths (a new zeroed one when None; the decode cache passes its
    memory-mapped file, so the set is never held twice). A None path is skipped (its row stays as it is). Returns
    ``out`` and ``{position: reason}`` for the files that could not be decoded. ``progress`` is called with the count
    done, for progress bars. Memory beyond ``out``: each thread holds one image at a time, decoded and as the float32
    copy the resize works on (about 4 MB at 600x450), and no thread waits with a finished image.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)
    out = np.zeros((len(paths), *size, 3), dtype=np.uint8) if out is None else out
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = resize_image(decode_image(paths[i]), size)
        except ValueError as exc:
            failures[i] = str(exc)

    # PIL's decoder and TensorFlow's kernels release the GIL, so threads use every core.
    todo = [i for i, path in enumerate(paths) if path is not None]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for done, _ in enumerate(pool.map(work, todo), start=1):
            if progress is not None:
                progress(done)
    return out, failures
