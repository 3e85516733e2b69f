"""The decode-once cache: decoded, resized images keyed by the data's fingerprint and the size.

A hit costs one ``np.load``; a miss decodes every image once and writes the cache atomically
(temporary files, then rename; the JSON index is written last and marks the entry complete).
"""

from __future__ import annotations

import hashlib
import json
import os
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


def read_cache(cache_dir: Path, key: str) -> tuple[np.ndarray, dict[str, str]] | None:
    """The cached images (one per image_id, in metadata order) and the ids that failed, or None."""
    index_path = cache_dir / f"{key}.json"
    images_path = cache_dir / f"{key}.npy"
    if not (index_path.is_file() and images_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text())
        images = np.load(images_path)
    except (OSError, ValueError):
        return None  # a damaged entry is rebuilt, never trusted
    return images, index["failures"]


def write_cache(cache_dir: Path, key: str, images: np.ndarray, failures: dict[str, str]) -> None:
    atomic_write(cache_dir / f"{key}.npy", lambda f: np.save(f, images, allow_pickle=False))
    atomic_write(cache_dir / f"{key}.json", json.dumps({"failures": failures}))

