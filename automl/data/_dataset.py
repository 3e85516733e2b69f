"""The dataset a run trains on: validated table, decoded images, labels for the task, and the split."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from automl import console
from automl.data._cache import cache_key, data_fingerprint, default_cache_dir, read_cache, write_cache
from automl.data._images import index_images, load_images
from automl.data._metadata import DX_CLASSES, MALIGNANT, METADATA_FILE, read_metadata
from automl.data._split import file_split, grouped_split, lesion_leaks
from automl.errors import DataError

BINARY_CLASSES = ("benign", "malignant")


def class_names(task: str) -> tuple[str, ...]:
    """Class names in output order: the seven dx codes, or benign/malignant."""
    return DX_CLASSES if task == "multiclass" else BINARY_CLASSES


@dataclass
class Dataset:
    """Images and labels of one task at one size, each row assigned to train, val or test.

    ``table`` has one row per image (metadata columns plus ``label`` and ``split``) in the same
    order as ``images``.
    """

    images: np.ndarray
    table: pd.DataFrame
    task: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    fingerprint: str
    split_protocol: str
    notes: list[str] = field(default_factory=list)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split."""
        mask = (self.table["split"] == split).to_numpy()
        return self.images[mask], self.table["label"].to_numpy()[mask]

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and split (columns)."""
        counts = pd.crosstab(self.table["label"].map(dict(enumerate(self.class_names))), self.table["split"])
        return counts.reindex(index=list(self.class_names), columns=["train", "val", "test"], fill_value=0)


def load_dataset(
    data_dir: str | Path,
    image_size: tuple[int, int] = (28, 28),
    task: str = "multiclass",
    split_method: str = "grouped",
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    split_seed: int = 0,
    split_file: str | Path | None = None,
    skip_bad_images: bool = False,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Validate a HAM10000 folder, decode (or load from cache) its images, label and split them.

    Every problem with the images is collected first and reported in one :class:`DataError`;
    with ``skip_bad_images`` the bad ones are left out and counted in ``Dataset.notes``.
    """
    data_dir = Path(data_dir)
    table = read_metadata(data_dir)
    files = index_images(data_dir)
    paths = [files.get(image_id) for image_id in table["image_id"]]
    fingerprint = data_fingerprint((data_dir / METADATA_FILE).read_bytes(), list(zip(table["image_id"], paths)))
    key = cache_key(fingerprint, list(zip(table["image_id"], paths)), image_size)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    cached = read_cache(cache_dir, key)
    if cached is not None:
        images, failures = cached
    else:
        started = time.monotonic()
        present = [i for i, p in enumerate(paths) if p is not None]
        with console.progress(len(present), f"decoding {len(present)} images to {image_size[0]}x{image_size[1]}") as bar:
            decoded, failed_at = load_images([paths[i] for i in present], image_size, progress=bar)
        images = np.zeros((len(table), *image_size, 3), dtype=np.uint8)
        images[present] = decoded
        failures = {table["image_id"][i]: "missing" for i, p in enumerate(paths) if p is None}
        failures |= {table["image_id"][present[j]]: reason for j, reason in failed_at.items()}
        write_cache(cache_dir, key, images, failures)
        console.info(f"decoded {len(present)} images in {time.monotonic() - started:.1f}s; cached as {cache_dir / key}.npy")

    notes = []
    if failures:
        first = ", ".join(f"{image_id} ({reason})" for image_id, reason in list(failures.items())[:5])
        summary = f"{len(failures)} of {len(table)} images (first: {first})"
        if not skip_bad_images:
            raise DataError(
                f"{data_dir}: {len(failures)} of {len(table)} images are missing or unreadable (first: {first}); "
                "fix them or pass --skip-bad-images to leave them out"
            )
        keep = ~table["image_id"].isin(failures).to_numpy()
        table, images = table[keep].reset_index(drop=True), images[keep]
        notes.append(f"skipped {summary} that are missing or unreadable")
        if table.empty:
            raise DataError(f"{data_dir}: no readable image is left after skipping the bad ones")

    table = table.copy()
    if task == "multiclass":
        table["label"] = table["dx"].map({dx: i for i, dx in enumerate(DX_CLASSES)}).astype(np.int64)
    else:
        table["label"] = table["dx"].isin(MALIGNANT).astype(np.int64)

    if split_method == "file" or split_file is not None:
        split_path = _resolve_split_file(Path(split_file), data_dir)
        table["split"] = file_split(table, split_path)
        leaks = lesion_leaks(table, table["split"].to_numpy())
        protocol = f"split file {split_path.name}"
        if any(leaks.values()):
            notes.append(
                f"split file {split_path.name} leaks lesions: {leaks['val']} val and {leaks['test']} test images "
                "share a lesion with a training image, so its scores are optimistic (use it only to compare "
                "with numbers published on it)"
            )
            protocol += f" (image-level; {leaks['test']} test images share a lesion with train)"
    else:
        _check_enough_lesions(table)
        table["split"] = grouped_split(table, fractions, split_seed)
        protocol = (
            f"lesion-grouped, stratified by dx, {'/'.join(f'{f:.0%}' for f in fractions)} "
            f"train/val/test, seed {split_seed}"
        )
    return Dataset(images, table, task, class_names(task), tuple(image_size), fingerprint, protocol, notes)


def _resolve_split_file(path: Path, data_dir: Path) -> Path:
    """A relative split file is looked for in the data folder first, then the working directory."""
    if not path.is_absolute() and (data_dir / path).is_file():
        return data_dir / path
    return path


def _check_enough_lesions(table: pd.DataFrame) -> None:
    lesions = table["lesion_id"].nunique()
    if lesions < 3:
        raise DataError(
            f"{METADATA_FILE}: only {lesions} distinct lesions; a grouped split needs at least 3 (or give a split file)"
        )
