"""Train/val/test splits: grouped by lesion_id so no lesion is seen in two splits, or read from a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from automl.errors import DataError

SPLITS = ("train", "val", "test")


def split_fingerprint(image_ids, split) -> str:
    """A short hash of which image is in which split, in any row order: two splits are the same when their
    fingerprints are, whatever made them (a seed, a file that was since edited, another version of this code).

    >>> split_fingerprint(["a", "b"], ["train", "val"]) == split_fingerprint(["b", "a"], ["val", "train"])
    True
    >>> split_fingerprint(["a", "b"], ["train", "val"]) == split_fingerprint(["a", "b"], ["val", "train"])
    False
    """
    digest = hashlib.sha256()
    for image_id, part in sorted(zip(map(str, image_ids), map(str, split))):
        digest.update(f"{image_id}:{part}\n".encode())
    return digest.hexdigest()[:16]


def grouped_split(table: pd.DataFrame, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Assign each row to train/val/test so that no lesion spans two splits and every dx is stratified.

    Within each dx, lesions are shuffled (seeded), placed largest first, each into the split
    furthest below its share of that dx's images. scikit-learn's StratifiedGroupKFold does the same
    job but took 10 s on HAM10000's 7,470 lesions; this takes milliseconds and allows any fractions.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"lesion_id": [f"L{i // 2}" for i in range(400)],
    ...                   "dx": ["nv"] * 200 + ["mel"] * 200})
    >>> split = grouped_split(t, (0.7, 0.15, 0.15), seed=0)
    >>> dict(sorted(pd.Series(split).value_counts().items()))
    {'test': 60, 'train': 280, 'val': 60}
    """
    rng = np.random.default_rng(seed)
    lesions = table.groupby("lesion_id", sort=True).agg(dx=("dx", "first"), images=("dx", "size"))
    assigned: dict[str, str] = {}
    for _, stratum in lesions.groupby("dx", sort=True):
        stratum = stratum.iloc[rng.permutation(len(stratum))].sort_values("images", ascending=False, kind="stable")
        target = np.asarray(fractions) * stratum["images"].sum()
        filled = np.zeros(len(SPLITS))
        for lesion_id, images in zip(stratum.index, stratum["images"]):
            k = int(np.argmax(target - filled))
            filled[k] += images
            assigned[lesion_id] = SPLITS[k]
    split = table["lesion_id"].map(assigned).to_numpy(dtype=object)
    check_no_lesion_leak(table, split)
    return split


def check_no_lesion_leak(table: pd.DataFrame, split: np.ndarray) -> None:
    """Raise if any lesion has images in more than one split (a bug, never user input)."""
    per_lesion = pd.Series(split, index=table.index).groupby(table["lesion_id"]).nunique()
    leaking = per_lesion[per_lesion > 1]
    if len(leaking):
        raise AssertionError(f"grouped split put {len(leaking)} lesions in several splits: {list(leaking.index[:5])}")


def lesion_leaks(table: pd.DataFrame, split: np.ndarray) -> dict[str, int]:
    """How many val/test images share a lesion with a training image (0, 0 for a grouped split)."""
    train_lesions = set(table["lesion_id"][split == "train"])
    return {s: int(table["lesion_id"][split == s].isin(train_lesions).sum()) for s in ("val", "test")}


def file_split(table: pd.DataFrame, path: Path) -> np.ndarray:
    """Read ``image_id,split`` rows (split is train, val or test) for every image of ``table``."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read as CSV: {str(exc).strip().splitlines()[0]}") from None
    missing_cols = [c for c in ("image_id", "split") if c not in rows.columns]
    if missing_cols:
        raise DataError(f"{path}: missing column {', '.join(missing_cols)} (a split file has image_id,split)")
    bad = rows[~rows["split"].isin(SPLITS)]
    if len(bad):
        raise DataError(
            f"{path}: {len(bad)} rows have a split other than train, val or test "
            f"(first: {bad['image_id'].iloc[0]} {bad['split'].iloc[0]!r})"
        )
    if rows["image_id"].duplicated().any():
        raise DataError(f"{path}: image_id {rows['image_id'][rows['image_id'].duplicated()].iloc[0]} appears twice")
    by_id = rows.set_index("image_id")["split"]
    missing = table["image_id"][~table["image_id"].isin(by_id.index)]
    if len(missing):
        raise DataError(f"{path}: {len(missing)} images have no split (first: {', '.join(missing[:5])})")
    split = by_id.loc[table["image_id"]].to_numpy(dtype=object)
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        raise DataError(f"{path}: no image is in split {', '.join(empty)}")
    return split
