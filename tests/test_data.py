import numpy as np
import pandas as pd
import pytest

import automl.data._dataset as dataset_module
from automl.data import DX_CLASSES, decode_image, grouped_split, lesion_leaks, load_dataset, read_metadata, resize_image
from automl.errors import DataError
from tests.conftest import make_ham


def test_loads_tiny_dataset(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    assert ds.images.shape == (len(ds.table), 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == DX_CLASSES
    assert set(ds.table["split"]) == {"train", "val", "test"}
    assert (ds.counts() > 0).all().all()  # every class in every split


def test_images_in_several_folders_are_found(tmp_path):
    root = make_ham(tmp_path / "ham", folders=("HAM10000_images_part_1", "HAM10000_images_part_2"))
    ds = load_dataset(root, image_size=(16, 16))
    assert len(ds.table) == len(pd.read_csv(root / "HAM10000_metadata.csv"))


def test_binary_task_labels_malignant(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16), task="binary")
    assert ds.class_names == ("benign", "malignant")
    malignant = ds.table["dx"].isin(["mel", "bcc", "akiec"])
    assert (ds.table["label"] == malignant.astype(int)).all()


def test_second_load_hits_the_cache(tiny_ham, monkeypatch):
    first = load_dataset(tiny_ham, image_size=(16, 16))

    def no_decoding(*args, **kwargs):
        raise AssertionError("images decoded again despite the cache")

    monkeypatch.setattr(dataset_module, "load_images", no_decoding)
    second = load_dataset(tiny_ham, image_size=(16, 16))
    np.testing.assert_array_equal(first.images, second.images)
    assert first.fingerprint == second.fingerprint


def test_grouped_split_never_shares_a_lesion(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    splits_per_lesion = ds.table.groupby("lesion_id")["split"].nunique()
    assert splits_per_lesion.max() == 1
    assert lesion_leaks(ds.table, ds.table["split"].to_numpy()) == {"val": 0, "test": 0}


def test_grouped_split_on_real_metadata(shared_data):
    table = read_metadata(shared_data / "ham10000_28")
    split = grouped_split(table, (0.70, 0.15, 0.15), seed=3)
    assert pd.Series(split).groupby(table["lesion_id"].to_numpy()).nunique().max() == 1
    fractions = pd.Series(split).value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.70, abs=0.01)
    assert fractions["test"] == pytest.approx(0.15, abs=0.01)
    # Stratified: each diagnosis keeps its share in the test split.
    by_dx = pd.crosstab(table["dx"], split, normalize="index")
    assert (by_dx["test"] - 0.15).abs().max() < 0.03
    assert not np.array_equal(split, grouped_split(table, (0.70, 0.15, 0.15), seed=4))


def test_dermamnist_split_file_reports_its_leak(shared_data):
    ds = load_dataset(shared_data / "ham10000_28", split_file="dermamnist_split.csv")
    assert ds.counts().sum().to_dict() == {"train": 7007, "val": 1003, "test": 2005}
    assert any("693 test images share a lesion" in note for note in ds.notes)


def test_real_150px_images_resize_like_medmnist(shared_data):
    """Our resize of the 150x112 originals lands close to MedMNIST's own 28px pictures."""
    sample = load_dataset(shared_data / "ham10000_sample_150", image_size=(28, 28))
    first_image = next((shared_data / "ham10000_sample_150" / "HAM10000_images").glob("*.jpg"))
    assert decode_image(first_image).shape == (112, 150, 3)
    ids = sample.table["image_id"]
    small = np.stack([decode_image(shared_data / "ham10000_28" / "HAM10000_images" / f"{i}.jpg") for i in ids])
    mad = np.abs(sample.images.astype(float) - small).mean()
    assert mad < 15, mad  # README of the shared data: about 10 for the same picture, 39 for others


def test_resize_keeps_images_already_at_size():
    image = np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)
    assert resize_image(image, (28, 28)) is image
    assert resize_image(image, (14, 20)).shape == (14, 20, 3)


# --- bad input: one DataError naming the file and the problem -------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_missing_metadata(tiny_ham):
    (tiny_ham / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match="HAM10000_metadata.csv: metadata file not found"):
        load_dataset(tiny_ham)


def test_missing_column(tiny_ham):
    path = tiny_ham / "HAM10000_metadata.csv"
    pd.read_csv(path).drop(columns="lesion_id").to_csv(path, index=False)
    with pytest.raises(DataError, match="missing column lesion_id"):
        load_dataset(tiny_ham)


def test_unknown_dx(tiny_ham):
    path = tiny_ham / "HAM10000_metadata.csv"
    table = pd.read_csv(path)
    table.loc[[0, 5], "dx"] = "melanoma"
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"2 rows have an unknown dx \(first: ISIC_0000000 \('melanoma'\)"):
        load_dataset(tiny_ham)


def test_missing_and_corrupt_images_are_reported_together(tiny_ham):
    images = sorted((tiny_ham / "HAM10000_images").glob("*.jpg"))
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:40])  # truncated JPEG
    images[2].write_text("not an image")
    expected = r"3 of \d+ images are missing or unreadable .*ISIC_0000000 \(missing\).*--skip-bad-images"
    with pytest.raises(DataError, match=expected) as err:
        load_dataset(tiny_ham, image_size=(16, 16))
    assert "\n" not in str(err.value)


def test_skip_bad_images(tiny_ham):
    total = len(pd.read_csv(tiny_ham / "HAM10000_metadata.csv"))
    sorted((tiny_ham / "HAM10000_images").glob("*.jpg"))[3].write_text("garbage")
    ds = load_dataset(tiny_ham, image_size=(16, 16), skip_bad_images=True)
    assert len(ds.table) == total - 1
    assert ds.notes and "skipped 1 of" in ds.notes[0]


def test_split_file_must_cover_every_image(tiny_ham, tmp_path):
    table = pd.read_csv(tiny_ham / "HAM10000_metadata.csv")
    split = pd.DataFrame({"image_id": table["image_id"][1:], "split": "train"})
    split.to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(DataError, match=r"split.csv: 1 images have no split \(first: ISIC_0000000\)"):
        load_dataset(tiny_ham, image_size=(16, 16), split_file=tmp_path / "split.csv")


def test_images_are_one_read_only_memory_map_of_the_cache_and_splits_are_index_arrays(tiny_ham):
    ds = load_dataset(tiny_ham, image_size=(16, 16))
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    again = load_dataset(tiny_ham, image_size=(16, 16))
    assert again.images.filename == ds.images.filename  # a second run maps the same file
    rows = {split: ds.rows(split) for split in ("train", "val", "test")}
    assert all(r.dtype.kind == "i" for r in rows.values())
    assert sorted(np.concatenate(list(rows.values())).tolist()) == ds.table["row"].tolist()
    np.testing.assert_array_equal(ds.labels("val"), ds.table.loc[ds.table["split"] == "val", "label"])


def test_a_dataset_travels_by_file_on_this_machine_and_by_value_elsewhere(tiny_ham):
    import pickle

    ds = load_dataset(tiny_ham, image_size=(16, 16))
    by_file = pickle.dumps(ds.shared_by_file(same_machine=True))
    by_value = pickle.dumps(ds.shared_by_file(same_machine=False))
    assert len(by_file) < ds.images.nbytes < len(by_value)  # the name of the file, or the images themselves
    mapped = pickle.loads(by_file)
    assert isinstance(mapped.images, np.memmap) and str(mapped.images.filename) == str(ds.images.filename)
    copied = pickle.loads(by_value).images
    # A plain array (not a memmap subclass), whose buffer pickle protocol 5 and Ray's object store pass without a copy.
    assert type(copied) is np.ndarray
    np.testing.assert_array_equal(copied, ds.images)
    assert mapped.rows("train").tolist() == ds.rows("train").tolist()


def test_skipped_bad_images_leave_the_shared_array_whole(tmp_path):
    root = make_ham(tmp_path / "ham")
    bad = sorted((root / "HAM10000_images").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    ds = load_dataset(root, image_size=(16, 16), skip_bad_images=True)
    assert len(ds.images) == len(ds.table) + 1 and bad.stem not in set(ds.table["image_id"])
    assert ds.table["row"].is_unique and ds.table["row"].max() < len(ds.images)
