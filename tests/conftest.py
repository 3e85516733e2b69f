"""Shared fixtures: tiny HAM10000-shaped datasets generated on the fly, and the shared real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# Each class gets its own colour, so a small CNN can learn the tiny data in a few epochs.
COLOURS = {
    "akiec": (200, 40, 40), "bcc": (40, 200, 40), "bkl": (40, 40, 200), "df": (200, 200, 40),
    "mel": (200, 40, 200), "nv": (40, 200, 200), "vasc": (120, 120, 120),
}
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_ham(root: Path, lesions_per_class: int = 12, size: int = 20, seed: int = 0,
             folders=("HAM10000_images",)) -> Path:
    """Write a HAM10000-layout folder: metadata CSV plus noisy, class-coloured JPEGs.

    Lesions have 1 to 3 images each; images are dealt round-robin over ``folders``.
    """
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for dx in DX:
        count = lesions_per_class * (3 if dx == "nv" else 1)
        for lesion in range(count):
            lesion_id = f"HAM_{dx}_{lesion:04d}"
            for _ in range(int(rng.integers(1, 4))):
                image_id = f"ISIC_{n:07d}"
                pixels = np.clip(np.array(COLOURS[dx]) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                folder = root / folders[n % len(folders)]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=95)
                rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": dx, "dx_type": "histo",
                             "age": 50.0, "sex": "male", "localization": "back"})
                n += 1
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder."""
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny_ham(tmp_path) -> Path:
    return make_ham(tmp_path / "ham")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "ham10000_28" / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"shared HAM10000 data not found at {SHARED_DATA}")
    return SHARED_DATA


def tiny_members(n_classes: int = 7) -> list:
    """Two untrained members at 16x16 (one conv block, and two with a flip layer), built as a search builds them."""
    from automl.hparams import ModelConfig
    from automl.model import build_model

    configs = [{"conv_blocks": 1, "base_filters": 4, "dense_units": 8},
               {"conv_blocks": 2, "base_filters": 4, "dense_units": 8, "flip_horizontal": True}]
    return [build_model(ModelConfig.from_params(c), (16, 16), n_classes) for c in configs]


def export_tiny_model(out_dir: Path, classes: tuple[str, ...] = DX) -> tuple:
    """An exported model folder of two untrained members (weights 2:1) for ``classes``: (Keras model, folder)."""
    from automl.export import assemble, export_model

    model = assemble(tiny_members(len(classes)), [2.0, 1.0], (16, 16))
    task = "binary" if len(classes) == 2 else "multiclass"
    export_model(model, out_dir, {"name": "test", "task": task, "classes": list(classes)})
    return model, out_dir


@pytest.fixture
def exported(tmp_path) -> tuple:
    """A tiny exported seven-class model: (Keras model, model folder)."""
    return export_tiny_model(tmp_path / "model")


def plain_tensorflow_outputs(model_dir: Path, raw: np.ndarray, scratch: Path) -> np.ndarray:
    """An exported SavedModel's outputs for ``raw`` images, from a fresh process with plain TensorFlow only."""
    np.save(scratch / "raw.npy", raw)
    code = (
        "import sys, json, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(Path(model_dir) / 'saved_model')!r})\n"
        f"raw = tf.constant(np.load({str(scratch / 'raw.npy')!r}))\n"
        "out = m.serve(raw).numpy()\n"
        # The serving signature, as TF Serving calls it: by the input's name.
        "assert np.allclose(m.signatures['serving_default'](image=raw)['output_0'].numpy(), out)\n"
        "print(json.dumps(out.tolist()))\n"
        "assert 'automl' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's threaded server) on 127.0.0.1, for the whole session: its endpoint."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server, monkeypatch, request) -> str:
    """``s3://BUCKET/runs`` in a new bucket of :func:`s3_server`, with the environment every AWS client reads set
    (pyarrow, and Ray's workers, which inherit it)."""
    from pyarrow import fs

    for name, value in (("AWS_ENDPOINT_URL", s3_server), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    name = "b-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"-{os.getpid()}"
    endpoint = s3_server.split("://")[1]
    fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}/runs"
