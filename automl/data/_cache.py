"""The decode-once cache: decoded, resized images keyed by the data's fingerprint and the size.

An entry is a ``.npy`` file read as a read-only memory map: a hit costs no copy and no decode, and every
process on the machine that opens the same entry (a second run, each local Ray trial) shares one copy of the
images in the page cache. A miss decodes straight into a new entry's memory map (no second copy in memory)
and swaps it in atomically (temporary file, then rename; the JSON index is written last and marks the entry
complete).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from automl.files import atomic_write

# Bump when decoding or resizing changes, so stale caches are never read.
CACHE_FORMAT = 2  # 2: 16-bit, float and alpha images decoded without clipping


def default_cache_dir() -> Path:
    """``$AUTOML_CACHE_DIR``, else ``~/.cache/skin-automl``."""
    return Path(os.environ.get("AUTOML_CACHE_DIR") or Path.home() / ".cache" / "skin-automl")


def data_fingerprint(metadata_bytes: bytes, files: list[tuple[str, Path | None]]) -> str:
    """A short hash of the metadata file and of each image's name and byte size.

    It names the dataset in model cards; it does not depend on where the folder lives.
    """
    digest = hashlib.sha256(metadata_bytes)
    for image_id, path in files:
        size = path.stat().st_size if path is not None else -1
        digest.update(f"{image_id}:{size}\n".encode())
    return digest.hexdigest()[:16]


def cache_key(fingerprint: str, files: list[tuple[str, Path | None]], size: tuple[int, int]) -> str:
    """The fingerprint plus modification times (an image rewritten in place is a miss) and the size."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{fingerprint}:{size[0]}x{size[1]}\n".encode())
    for image_id, path in files:
        digest.update(f"{image_id}:{path.stat().st_mtime_ns if path is not None else -1}\n".encode())
    return f"{fingerprint}-{size[0]}x{size[1]}-{digest.hexdigest()[:12]}"


def read_cache(cache_dir: Path, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, str]] | None:
    """The cached images as a read-only memory map (one per image_id, in metadata order) and the ids that failed,
    or None when the entry is missing, damaged or not of ``shape``."""
    index_path, images_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npy"
    if not (index_path.is_file() and images_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text())
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError):
        return None  # a damaged entry is rebuilt, never trusted
    if images.shape != tuple(shape) or images.dtype != np.uint8:
        return None
    return images, index["failures"]


def write_cache(cache_dir: Path, key: str, shape: tuple[int, ...],
                fill: Callable[[np.ndarray], dict[str, str]]) -> tuple[np.ndarray, dict[str, str]]:
    """Make an entry: ``fill`` decodes into a zeroed uint8 memory map of ``shape`` (the temporary file) and returns
    the failures; the file is then renamed into place and the entry returned as :func:`read_cache` returns it."""
    failures: dict[str, str] = {}

    def write(f) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))  # a sparse file of zeros: placeholders for images that fail
        f.flush()
        images = np.memmap(f, dtype=np.uint8, mode="r+", offset=offset, shape=shape)
        failures.update(fill(images))
        images.flush()
        del images

    atomic_write(cache_dir / f"{key}.npy", write)
    atomic_write(cache_dir / f"{key}.json", json.dumps({"failures": failures}))
    return read_cache(cache_dir, key, shape)
