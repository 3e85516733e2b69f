"""HAM10000 data: validated metadata, decode-once image cache, lesion-grouped splits.

>>> from automl.data import load_dataset                               # doctest: +SKIP
>>> ds = load_dataset("../shared/data/ham10000_28", image_size=(28, 28))  # doctest: +SKIP
>>> rows, labels = ds.rows("train"), ds.labels("train")                # doctest: +SKIP
>>> first_batch = ds.images[rows[:64]]  # doctest: +SKIP
"""

from automl.data._cache import default_cache_dir
from automl.data._dataset import BINARY_CLASSES, Dataset, class_names, load_dataset
from automl.data._images import (IMAGE_SUFFIXES, RESIZE_METHOD, ImageScan, decode_image, index_images, resize_image,
                                 resize_tensor, scan_images, skipped_line)
from automl.data._metadata import DX_CLASSES, MALIGNANT, METADATA_FILE, read_image_table, read_metadata
from automl.data._split import grouped_split, lesion_leaks

__all__ = [
    "BINARY_CLASSES",
    "DX_CLASSES",
    "IMAGE_SUFFIXES",
    "ImageScan",
    "MALIGNANT",
    "METADATA_FILE",
    "RESIZE_METHOD",
    "Dataset",
    "class_names",
    "decode_image",
    "default_cache_dir",
    "grouped_split",
    "index_images",
    "lesion_leaks",
    "load_dataset",
    "read_image_table",
    "read_metadata",
    "resize_image",
    "resize_tensor",
    "scan_images",
    "skipped_line",
]
