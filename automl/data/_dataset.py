"""The dataset a run trains on: validated table, decoded images, labels for the task, and the split."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from automl import console
from automl.data._cache import cache_key, data_fingerprint, default_cache_dir, read_cache, write_cache
from automl.data._images import index_images, load_images
from automl.data._metadata import DX_CLASSES, MALIGNANT, METADATA_FILE, read_metadata
from automl.data._split import file_split, grouped_split, lesion_leaks, split_fingerprint
from automl.errors import DataError

BINARY_CLASSES = ("benign", "malignant")


def class_names(task: str) -> tuple[str, ...]:
    """Class names in output order: the seven dx codes, or benign/malignant."""
    return DX_CLASSES if task == "multiclass" else BINARY_CLASSES


@dataclass
class Dataset:
    """Images and labels of one task at one size, each row assigned to train, val or test.

    ``images`` holds every decoded image once, shared and read-only: the decode cache's memory map (every
    process that opens it shares the same pages), or the Ray object store's buffer in a cluster worker.
    ``table`` has one row per usable image (metadata columns plus ``label``, ``split`` and ``row``, the
    image's position in ``images``). A split is an index array into ``images`` (:meth:`rows`): training
    gathers its batches by index, so no split, trial or engine ever holds a copy of the set.
    """

    images: np.ndarray
    table: pd.DataFrame
    task: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    fingerprint: str
    split_protocol: str
    notes: list[str] = field(default_factory=list)
    #: Pickle ``images`` as its memory-mapped file's name rather than its bytes (:meth:`shared_by_file`).
    images_by_file: bool = False

    def rows(self, split: str) -> np.ndarray:
        """The positions in :attr:`images` of one split's images, in table order."""
        return self.table["row"].to_numpy()[(self.table["split"] == split).to_numpy()]

    def labels(self, split: str) -> np.ndarray:
        """The class indices of one split's images, in table order (aligned with :meth:`rows`)."""
        return self.table["label"].to_numpy()[(self.table["split"] == split).to_numpy()]

    @cached_property
    def split_fingerprint(self) -> str:
        """Which image is in which split, as a short hash: what tells two runs' splits apart (their
        :attr:`split_protocol` describes how a split was made, not what it holds)."""
        return split_fingerprint(self.table["image_id"], self.table["split"])

    def with_train_and_val(self) -> Dataset:
        """The same images with the val split moved into train (test untouched): what a refit learns from.

        The images array is shared, not copied; the val split of the result is empty.
        """
        table = self.table.copy()
        table["split"] = table["split"].replace("val", "train")
        return dataclasses.replace(self, table=table, notes=[*self.notes, "val split merged into train (refit)"])

    def shared_by_file(self, same_machine: bool) -> Dataset:
        """This dataset as it should travel to Ray workers: when they run on this machine and the images are the
        decode cache's memory map, it pickles as the file's name and each worker maps the same file (one copy in the
        page cache for every trial); otherwise as the array itself, which Ray's object store holds once per node."""
        by_file = same_machine and isinstance(self.images, np.memmap) and self.images.filename is not None
        return dataclasses.replace(self, images_by_file=by_file)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.images_by_file:
            state["images"] = _MappedImages(str(self.images.filename), self.images.shape)
        elif isinstance(self.images, np.memmap):
            # As a plain array: pickle protocol 5 then hands its buffer over without a copy, which Ray's object store
            # keeps once and maps read-only into each worker (a memmap would be copied into every one).
            state["images"] = self.images.view(np.ndarray)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], _MappedImages):
            state["images"] = state["images"].open()
        self.__dict__.update(state)

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Images per class of one split, in :attr:`class_names` order."""
        return np.bincount(self.labels(split), minlength=len(self.class_names))

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and split (columns)."""
        counts = pd.crosstab(self.table["label"].map(dict(enumerate(self.class_names))), self.table["split"])
        return counts.reindex(index=list(self.class_names), columns=["train", "val", "test"], fill_value=0)


@dataclass(frozen=True)
class _MappedImages:
    """A decode cache file by name: what a dataset shared by file pickles its images as."""

    path: str
    shape: tuple[int, ...]

    def open(self) -> np.ndarray:
        images = np.load(self.path, mmap_mode="r")
        if images.shape != self.shape:
            raise DataError(f"{self.path}: the decode cache changed while a run used it (shape {images.shape}, "
                            f"expected {self.shape}); run the command again")
        return images


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
    located = list(zip(table["image_id"], paths))
    fingerprint = data_fingerprint((data_dir / METADATA_FILE).read_bytes(), located)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    images, failures = _cached_or_decoded(table, paths, image_size, cache_dir,
                                          cache_key(fingerprint, located, image_size))
    table = table.assign(row=np.arange(len(table)))
    table, notes = _without_failures(data_dir, table, failures, skip_bad_images)
    table["label"] = _labels(table, task)
    table["split"], protocol, split_notes = _split(table, data_dir, split_method, split_file, fractions, split_seed)
    return Dataset(images, table, task, class_names(task), tuple(image_size), fingerprint, protocol,
                   notes + split_notes)


def _cached_or_decoded(
    table: pd.DataFrame, paths: list[Path | None], image_size: tuple[int, int], cache_dir: Path, key: str
) -> tuple[np.ndarray, dict[str, str]]:
    """The images in table order, memory-mapped from the cache (decoded into it first on a miss), and
    ``{image_id: reason}`` of those that failed."""
    shape = (len(table), *image_size, 3)
    cached = read_cache(cache_dir, key, shape)
    if cached is not None:
        return cached
    started = time.monotonic()
    present = sum(p is not None for p in paths)

    def fill(images: np.ndarray) -> dict[str, str]:
        # Missing and undecodable images keep a black placeholder so rows and images stay aligned.
        with console.progress(present, f"decoding {present} images to {image_size[0]}x{image_size[1]}") as bar:
            _, failed_at = load_images(paths, image_size, out=images, progress=bar)
        failures = {table["image_id"][i]: "missing" for i, p in enumerate(paths) if p is None}
        return failures | {table["image_id"][i]: reason for i, reason in failed_at.items()}

    images, failures = write_cache(cache_dir, key, shape, fill)
    console.info(f"decoded {present} images in {time.monotonic() - started:.1f}s; cached as {cache_dir / key}.npy")
    return images, failures


def _without_failures(
    data_dir: Path, table: pd.DataFrame, failures: dict[str, str], skip_bad_images: bool
) -> tuple[pd.DataFrame, list[str]]:
    """Raise on bad images, or with ``skip_bad_images`` leave their rows out of the table (their images stay in the
    shared array, unused) and say how many in a note."""
    if not failures:
        return table, []
    first = ", ".join(f"{image_id} ({reason})" for image_id, reason in list(failures.items())[:5])
    if not skip_bad_images:
        raise DataError(
            f"{data_dir}: {len(failures)} of {len(table)} images are missing or unreadable (first: {first}); "
            "fix them or pass --skip-bad-images to leave them out"
        )
    note = f"skipped {len(failures)} of {len(table)} images (first: {first}) that are missing or unreadable"
    table = table[~table["image_id"].isin(failures).to_numpy()].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{data_dir}: no readable image is left after skipping the bad ones")
    return table, [note]


def _labels(table: pd.DataFrame, task: str) -> pd.Series:
    """Class indices in :func:`class_names` order: the dx code's, or 1 for malignant dx codes."""
    if task == "multiclass":
        return table["dx"].map({dx: i for i, dx in enumerate(DX_CLASSES)}).astype(np.int64)
    return table["dx"].isin(MALIGNANT).astype(np.int64)


def _split(
    table: pd.DataFrame,
    data_dir: Path,
    split_method: str,
    split_file: str | Path | None,
    fractions: tuple[float, float, float],
    split_seed: int,
) -> tuple[np.ndarray, str, list[str]]:
    """Each row's split, the protocol in words, and a note when a split file leaks lesions."""
    if split_method == "file" or split_file is not None:
        split_path = _resolve_split_file(Path(split_file), data_dir)
        split = file_split(table, split_path)
        leaks = lesion_leaks(table, split)
        protocol, notes = f"split file {split_path.name}", []
        if any(leaks.values()):
            notes.append(
                f"split file {split_path.name} leaks lesions: {leaks['val']} val and {leaks['test']} test images "
                "share a lesion with a training image, so its scores are optimistic (use it only to compare "
                "with numbers published on it)"
            )
            protocol += f" (image-level; {leaks['test']} test images share a lesion with train)"
        return split, protocol, notes
    _check_enough_lesions(table)
    protocol = (
        f"lesion-grouped, stratified by dx, {'/'.join(f'{f:.0%}' for f in fractions)} "
        f"train/val/test, seed {split_seed}"
    )
    return grouped_split(table, fractions, split_seed), protocol, []


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
