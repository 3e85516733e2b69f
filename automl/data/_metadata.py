"""HAM10000_metadata.csv: read and validated before any image is touched."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from automl.errors import DataError

METADATA_FILE = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
#: The seven HAM10000 diagnoses, in the order used for class indices everywhere.
DX_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
#: Diagnoses counted as malignant in the binary task.
MALIGNANT = ("akiec", "bcc", "mel")


def read_metadata(data_dir: Path) -> pd.DataFrame:
    """The metadata table, one row per image, with required columns checked and ``dx`` known."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    path = data_dir / METADATA_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: metadata file not found; the data folder must hold the public HAM10000 layout "
            f"({METADATA_FILE} plus image folders)"
        )
    table = read_image_table(path, REQUIRED_COLUMNS)
    unknown = table[~table["dx"].str.lower().isin(DX_CLASSES)]
    if len(unknown):
        first = ", ".join(f"{r.image_id} ({r.dx!r})" for r in unknown.head(5).itertuples())
        raise DataError(
            f"{path}: {len(unknown)} rows have an unknown dx (first: {first}); "
            f"known codes: {', '.join(DX_CLASSES)}"
        )
    table["dx"] = table["dx"].str.lower()
    mixed = table.groupby("lesion_id")["dx"].nunique()
    mixed = mixed[mixed > 1]
    if len(mixed):
        raise DataError(
            f"{path}: {len(mixed)} lesion_ids carry more than one dx (first: {', '.join(mixed.index[:5])}); "
            "each lesion must have one diagnosis"
        )
    return table.reset_index(drop=True)


def read_image_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV with one row per image: readable, the ``required`` columns present, stripped and never empty, and each
    ``image_id`` once; every problem a :class:`DataError` naming the file.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read as CSV: {str(exc).strip().splitlines()[0]}") from None
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(table.columns)}; needed: {', '.join(required)})"
        )
    if table.empty:
        raise DataError(f"{path}: has a header but no rows")
    for column in required:
        table[column] = table[column].str.strip()
        empty = table.index[table[column] == ""]
        if len(empty):
            rows = ", ".join(str(i + 2) for i in empty[:5])
            raise DataError(f"{path}: {len(empty)} rows have an empty {column} (lines {rows})")
    duplicated = table["image_id"][table["image_id"].duplicated()]
    if len(duplicated):
        raise DataError(
            f"{path}: {len(duplicated)} image_ids appear more than once (first: {', '.join(duplicated[:5])})"
        )
    return table
