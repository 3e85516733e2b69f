"""decode_image: every colour mode PIL opens becomes (H, W, 3) uint8 without clipping; anything else a ValueError."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from automl.data import decode_image
from automl.data._images import _to_rgb


def saved(tmp_path, image: Image.Image, name: str, **kwargs) -> np.ndarray:
    image.save(tmp_path / name, **kwargs)
    return decode_image(tmp_path / name)


def grey(values) -> np.ndarray:
    """The expected RGB array of a greyscale row."""
    return np.repeat(np.array([values], dtype=np.uint8)[..., None], 3, axis=2)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    expected = grey([0, 1, 4, 128, 255])  # 1000/257 = 3.9, 32768/257 = 127.5 (rounded to even)
    assert Image.fromarray(values).mode == "I;16"
    np.testing.assert_array_equal(saved(tmp_path, Image.fromarray(values), "a.png"), expected)
    big_endian = Image.fromarray(values.astype(">u2"))
    assert big_endian.mode == "I;16B"
    np.testing.assert_array_equal(saved(tmp_path, big_endian, "b.tiff"), expected)


def test_32_bit_integer_images(tmp_path):
    sixteen = Image.fromarray(np.array([[0, 257, 1000, 65535]], dtype=np.int32))  # 16-bit data in mode I
    assert sixteen.mode == "I"
    np.testing.assert_array_equal(saved(tmp_path, sixteen, "a.tiff"), grey([0, 1, 4, 255]))
    wide = Image.fromarray(np.array([[-100, 0, 100, 155]], dtype=np.int32))  # own range: -100..155 onto 0..255
    np.testing.assert_array_equal(saved(tmp_path, wide, "b.tiff"), grey([0, 100, 200, 255]))


def test_float_images_use_their_own_range(tmp_path):
    image = Image.fromarray(np.array([[-1.0, 0.0, 2.0, 3.0]], dtype=np.float32))
    assert image.mode == "F"  # (v + 1) * 255 / 4: 0, 63.75, 191.25, 255
    np.testing.assert_array_equal(saved(tmp_path, image, "a.tiff"), grey([0, 64, 191, 255]))
    constant = Image.fromarray(np.full((2, 3), 0.5, dtype=np.float32))
    np.testing.assert_array_equal(saved(tmp_path, constant, "b.tiff"), np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        saved(tmp_path, Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)), "c.tiff")


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 128], [200, 100, 50, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    # 200 * 128 / 255 = 100.4, 100 * 128 / 255 = 50.2, 50 * 128 / 255 = 25.1
    expected = np.array([[[100, 50, 25], [0, 0, 0], [200, 100, 50]]], dtype=np.uint8)
    np.testing.assert_array_equal(saved(tmp_path, Image.fromarray(rgba), "rgba.png"), expected)
    la = Image.fromarray(np.array([[[200, 51], [10, 255]]], dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(saved(tmp_path, la, "la.png"), grey([40, 10]))  # 200 * 51 / 255 = 40


def test_palette_and_colour_key_transparency(tmp_path):
    palette = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    palette.putpalette([9, 9, 9, 255, 0, 0, 0, 0, 255])
    np.testing.assert_array_equal(saved(tmp_path, palette, "p.png"),
                                  np.array([[[9, 9, 9], [255, 0, 0], [0, 0, 255]]], dtype=np.uint8))
    # Per-entry alpha: entry 0 transparent, entry 1 half (128), entry 2 opaque.
    np.testing.assert_array_equal(saved(tmp_path, palette, "pt.png", transparency=bytes([0, 128, 255])),
                                  np.array([[[0, 0, 0], [128, 0, 0], [0, 0, 255]]], dtype=np.uint8))
    rgb = Image.fromarray(np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8))
    np.testing.assert_array_equal(saved(tmp_path, rgb, "key.png", transparency=(10, 20, 30)),
                                  np.array([[[0, 0, 0], [40, 50, 60]]], dtype=np.uint8))
    sixteen = Image.fromarray(np.array([[5000, 65535]], dtype=np.uint16))
    np.testing.assert_array_equal(saved(tmp_path, sixteen, "key16.png", transparency=5000), grey([0, 255]))


def test_other_colour_modes_and_orientation(tmp_path):
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8), mode="CMYK")
    np.testing.assert_array_equal(saved(tmp_path, cmyk, "c.tiff"),
                                  np.array([[[255, 255, 255], [0, 255, 255], [0, 0, 0]]], dtype=np.uint8))
    bilevel = Image.fromarray(np.array([[True, False]]))
    np.testing.assert_array_equal(saved(tmp_path, bilevel, "one.png"), grey([255, 0]))
    lab = saved(tmp_path, Image.new("LAB", (1, 1), (255, 128, 128)), "lab.tiff")  # L=100, a=b=0: white
    assert lab.shape == (1, 1, 3) and lab.min() >= 250
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: displayed after a quarter turn clockwise
    np.testing.assert_array_equal(saved(tmp_path, Image.fromarray(pixels), "e.png", exif=exif),
                                  np.rot90(pixels, k=-1))
    # Modes no file format here writes: premultiplied alpha, palette with alpha, HSV.
    np.testing.assert_array_equal(_to_rgb(Image.new("La", (1, 1), (100, 128))), grey([100]))
    np.testing.assert_array_equal(_to_rgb(Image.new("RGBa", (1, 1), (100, 50, 0, 128))),
                                  np.array([[[100, 50, 0]]], dtype=np.uint8))
    pa = Image.new("PA", (1, 1), (1, 51))
    pa.putpalette([0, 0, 0, 200, 100, 0])
    np.testing.assert_array_equal(_to_rgb(pa), np.array([[[40, 20, 0]]], dtype=np.uint8))  # 51/255 = 0.2
    np.testing.assert_array_equal(_to_rgb(Image.new("HSV", (1, 1), (0, 255, 255))),
                                  np.array([[[255, 0, 0]]], dtype=np.uint8))


def test_unreadable_paths_say_why(tmp_path):
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "broken.jpg")
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "text.jpg").write_text("not an image")
    for name, reason in (("absent.jpg", "missing"), ("broken.jpg", "broken symbolic link"),
                         ("loop.jpg", "cannot read: Too many levels of symbolic links"),
                         ("folder.jpg", "cannot read: Is a directory"), ("text.jpg", "not an image PIL can read")):
        with pytest.raises(ValueError) as raised:
            decode_image(tmp_path / name)
        assert str(raised.value) == reason, name


def encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "TIFF", "GIF", "BMP", "WEBP")}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# PIL warns about some damaged files ("Truncated File Read") before it raises or decodes them: expected here.
quiet = pytest.mark.filterwarnings("ignore::UserWarning")


def decodes_or_says_why(path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        image = decode_image(path)
    except ValueError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@quiet
@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_decode_or_raise_value_error(tmp_path, data):
    decodes_or_says_why(tmp_path / "fuzz.jpg", data)


@quiet
@FUZZ
@given(fmt=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1), noise=st.binary(max_size=16),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3))
def test_truncated_and_damaged_files_decode_or_raise_value_error(tmp_path, fmt, cut, noise, flips):
    data = bytearray(VALID[fmt])
    for where, value in flips:
        data[min(int(where * len(data)), len(data) - 1)] = value
    decodes_or_says_why(tmp_path / "fuzz.png", bytes(data[: int(len(data) * cut)]) + noise)
