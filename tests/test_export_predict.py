"""Export of an ensemble graph (raw images in), reload in plain TensorFlow, and predict's CSV."""

import json
import re
import zipfile

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from automl.data import DX_CLASSES, decode_image, resize_image
from automl.errors import UserError
from automl.export import assemble
from automl.predict import predict_files
from tests.conftest import plain_tensorflow_outputs, tiny_members

# The ``exported`` fixture (a tiny exported model folder) is in conftest.py.


def test_ensemble_graph_resizes_like_training_and_averages_members():
    ms = tiny_members()
    model = assemble(ms, [2.0, 1.0], (16, 16))
    raw = np.random.default_rng(0).integers(0, 256, (2, 45, 60, 3), dtype=np.uint8)
    resized = np.stack([resize_image(image, (16, 16)) for image in raw]).astype("float32")
    expected = (2 * ms[0](resized, training=False).numpy() + ms[1](resized, training=False).numpy()) / 3
    np.testing.assert_allclose(model(raw).numpy(), expected, atol=1e-6)
    single = assemble(ms, [1.0, 0.0], (16, 16))  # a zero-weight member is left out
    np.testing.assert_allclose(single(raw).numpy(), ms[0](resized, training=False).numpy(), atol=1e-6)
    np.testing.assert_array_equal(model(raw).numpy(), model(raw).numpy())  # no augmentation at inference


def test_saved_model_reloads_in_plain_tensorflow(exported, tmp_path):
    model, model_dir = exported
    raw = np.random.default_rng(1).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(plain_tensorflow_outputs(model_dir, raw, tmp_path), model(raw).numpy(), atol=1e-5)
    reloaded = keras.saving.load_model(model_dir / "model.keras")
    np.testing.assert_allclose(reloaded(raw).numpy(), model(raw).numpy(), atol=1e-6)
    assert json.loads((model_dir / "model_card.json").read_text())["classes"] == list(DX_CLASSES)
    assert "# test" in (model_dir / "model_card.md").read_text()
    # Each weight stored once (model.export stored each twice: keras-team/keras#23553).
    stored = sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(
        str(model_dir / "saved_model" / "variables" / "variables")) if "VARIABLE_VALUE" in name)
    assert model.count_params() <= stored <= sum(int(np.prod(weight.shape)) for weight in model.weights)
    with zipfile.ZipFile(model_dir / "model.keras") as packed:  # deflated, and Keras reloaded it above
        assert {entry.compress_type for entry in packed.infolist()} == {zipfile.ZIP_DEFLATED}


def test_predict_schema_and_error_rows(exported, tmp_path):
    model, model_dir = exported
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / "ISIC_A.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 20), dtype=np.uint8)).save(images / "sub" / "ISIC_B.png")  # greyscale
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / "sub" / "ISIC_A.jpg")  # same name
    (images / "ISIC_C.jpg").write_bytes(b"not a jpeg")
    (images / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (images / "loop.png").symlink_to(images / "loop.png")
    # The folder, a file in it again and a missing file: one row per path.
    table = predict_files(model_dir, [images, images / "ISIC_A.jpg", tmp_path / "missing.jpg"], tmp_path / "preds.csv")
    written = pd.read_csv(tmp_path / "preds.csv", keep_default_na=False)
    assert list(written.columns) == ["image_id", "path", "dx_pred", *[f"p_{c}" for c in DX_CLASSES], "error"]
    assert written["path"].is_unique and len(table) == len(written) == 7
    rows = written.set_index("path")
    same_name = [str(images / "ISIC_A.jpg"), str(images / "sub" / "ISIC_A.jpg")]
    assert list(rows.loc[same_name, "image_id"]) == ["ISIC_A", "ISIC_A"]
    assert rows.loc[str(images / "ISIC_C.jpg"), "error"]
    assert rows.loc[str(tmp_path / "missing.jpg"), "error"] == "missing"
    assert rows.loc[str(images / "broken.jpg"), "error"] == "broken symbolic link"
    assert "symbolic links" in rows.loc[str(images / "loop.png"), "error"]
    first = rows.loc[str(images / "ISIC_A.jpg")]
    assert first["error"] == "" and first["dx_pred"] in DX_CLASSES
    expected = model(decode_image(images / "ISIC_A.jpg")[None]).numpy()[0]
    np.testing.assert_allclose(first[[f"p_{c}" for c in DX_CLASSES]].astype(float), expected, atol=1e-6)


def test_predict_reads_every_format_pillow_reads_and_names_what_it_skips(exported, tmp_path, capsys):
    _, model_dir = exported
    images = tmp_path / "formats"
    images.mkdir()
    picture = np.random.default_rng(3).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    for suffix in ("tif", "bmp", "webp"):
        Image.fromarray(picture).save(images / f"ISIC_{suffix}.{suffix}")
    (images / "ISIC_bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (images / "notes.txt").write_text("not an image")
    table = predict_files(model_dir, [images], tmp_path / "preds.csv")
    assert len(table) == 4
    assert (table["error"] == "").sum() == 3 and table.loc[table["image_id"] == "ISIC_bad", "error"].item()
    assert set(table.loc[table["error"] == "", "dx_pred"]) <= set(DX_CLASSES)
    assert "skipped 1 file(s): notes.txt (.txt is not an image format Pillow reads)" in capsys.readouterr().err


def test_predict_bad_arguments_are_one_line_before_the_model_loads(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.keras").write_text("junk\n")

    def refused(match, out="preds.csv"):
        with pytest.raises(UserError, match=match) as raised:
            predict_files(model_dir, [image], tmp_path / out)
        assert "\n" not in str(raised.value) and not (tmp_path / "preds.csv").exists()

    card = re.escape(str(model_dir / "model_card.json")) + ": "
    (tmp_path / "outdir").mkdir()
    refused(r"outdir: is a folder; --out names the CSV file to write", out="outdir")
    refused(card + "missing")
    (model_dir / "model_card.json").write_text("{bad")
    refused(card + "(not valid JSON|damaged)")
    (model_dir / "model_card.json").write_text('{"classes": "nv"}')
    refused(card + "field classes must be a list")
    (model_dir / "model_card.json").write_text(json.dumps({"classes": ["benign", "malignant"]}))
    refused(r"model.keras: not a Keras model file")
    with zipfile.ZipFile(model_dir / "model.keras", "w") as archive:  # a zip, but not a model
        archive.writestr("readme.txt", "hello")
    refused(r"model.keras: cannot load the model")


def test_predict_fails_only_when_nothing_is_readable(exported, tmp_path):
    _, model_dir = exported
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(UserError, match="none of the 1 inputs could be read"):
        predict_files(model_dir, [tmp_path / "bad.jpg"], tmp_path / "preds.csv")
    assert (tmp_path / "preds.csv").is_file()  # the error rows are still written


def test_export_alone_loads_members_with_the_models_own_layers(tmp_path):
    """`automl export` runs in a process that has trained nothing: loading a member with colour constancy (a layer
    of automl.model) must not depend on automl.model having been imported by someone else."""
    import subprocess
    import sys

    from automl.model import ShadesOfGray

    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, ShadesOfGray(6.0)(inputs)).save(tmp_path / "member.keras")
    code = ("import keras, automl.export; "
            f"print(type(keras.saving.load_model({str(tmp_path / 'member.keras')!r}).layers[-1]).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip().endswith("ShadesOfGray")
