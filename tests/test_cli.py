"""The ``automl`` command as a user meets it: real runs on tiny data, and one clear line for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest

from automl.cli import main
from automl.spec import shipped_specs_dir

SPEC = shipped_specs_dir() / "seed000_proposed.yaml"
TINY_SPEC = """
name: tiny
data: {image_size: 16}
training: {epochs: 2, early_stopping_patience: 0}
hyperparameters: {conv_blocks: 2, base_filters: 8, dense_units: 16, batch_size: 16, imbalance: class_weight}
"""


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_metrics_and_model(tiny_ham, tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["train", spec, "--data", tiny_ham, "--out", out], capsys)
    assert code == 0, stderr
    assert "epoch   2/2" in stderr and "best val_balanced_accuracy" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_balanced_accuracy", "val_macro_f1", "val_accuracy", "val_auc",
                "test_balanced_accuracy", "test_macro_f1", "test_accuracy", "test_auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_class"]["test"]) == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert metrics["epochs_run"] == 2 and metrics["data"]["split"].startswith("lesion-grouped")
    assert len(pd.read_csv(out / "history.csv")) == 2
    assert keras.saving.load_model(out / "model.keras").output_shape == (None, 7)
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def bad_inputs(tiny_ham: Path, tmp_path: Path):
    def spec_with(text):
        path = tmp_path / f"bad{len(list(tmp_path.glob('bad*.yaml')))}.yaml"
        path.write_text(text)
        return path

    def edit_metadata(change):
        path = tiny_ham / "HAM10000_metadata.csv"
        table = pd.read_csv(path)
        change(table)
        table.to_csv(path, index=False)

    images = sorted((tiny_ham / "HAM10000_images").glob("*.jpg"))
    return {
        "missing metadata": (lambda: (tiny_ham / "HAM10000_metadata.csv").unlink(), SPEC, "metadata file not found"),
        "missing column": (lambda: edit_metadata(lambda t: t.pop("dx")), SPEC, "missing column dx"),
        "unknown dx": (lambda: edit_metadata(lambda t: t.__setitem__("dx", t["dx"].replace("df", "dermatofibroma"))),
                       SPEC, "unknown dx"),
        "missing image": (lambda: images[4].unlink(), SPEC, "1 of"),
        "corrupt jpeg": (lambda: images[5].write_bytes(images[5].read_bytes()[:30]), SPEC, "corrupt"),
        "unknown key": (lambda: None, spec_with("hyperparameters: {conv_blocks: 2}\ntraning: {}\n"),
                        "unknown key 'traning'"),
        "wrong type": (lambda: None, spec_with("hyperparameters: {dense_units: many}\n"), "dense_units: expected int"),
        "too deep": (lambda: None, spec_with("hyperparameters: {conv_blocks: 6}\n"), "too deep for 28x28"),
    }


BAD_INPUTS = ("missing metadata", "missing column", "unknown dx", "missing image", "corrupt jpeg",
              "unknown key", "wrong type", "too deep")


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_line(case, tiny_ham, tmp_path, capsys):
    cases = bad_inputs(tiny_ham, tmp_path)
    assert set(cases) == set(BAD_INPUTS)
    break_it, spec, message = cases[case]
    break_it()
    out = tmp_path / "out"
    code, _, stderr = run_cli(["train", spec, "--data", tiny_ham, "--out", out], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("automl train: error")]
    assert code == 2
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "automl", "train", str(SPEC), "--data", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"automl train: error: {tmp_path / 'missing'}: data folder not found"]


def test_train_binary_task(tiny_ham, tmp_path, capsys):
    spec = tmp_path / "binary.yaml"
    spec.write_text(TINY_SPEC.replace("data: {image_size: 16}", "data: {image_size: 16, task: binary}"))
    code, _, stderr = run_cli(["train", spec, "--data", tiny_ham, "--out", tmp_path / "out"], capsys)
    assert code == 0, stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["class_names"] == ["benign", "malignant"]
    assert 0 <= metrics["test_sensitivity"] <= 1 and 0 <= metrics["test_specificity"] <= 1
    assert set(metrics["per_class"]["test"]) == {"benign", "malignant"}
