"""The Python API: the example in automl.api's docstring (what the docs show) run as written on a small generated
HAM10000 folder, and ``import automl`` staying cheap."""

import os
import subprocess
import sys
from pathlib import Path

import automl.api
from tests.conftest import make_ham


def docstring_example() -> str:
    """The example code block of :mod:`automl.api`'s docstring, dedented."""
    text = automl.api.__doc__.split("Example (")[1].split("::\n", 1)[1]
    block = []
    for line in text.splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


def test_the_documented_example_runs_as_written(tmp_path):
    make_ham(tmp_path / "HAM10000")  # where the example's data="HAM10000" points, from the working folder
    example = docstring_example()
    assert 'automl.run("quick", data="HAM10000"' in example
    proc = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, check=False)
    print(proc.stdout[-3000:])  # the example's output, in CI's log
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = automl.api.load_run(tmp_path / "results" / "demo")
    board = run.leaderboard
    assert len(board) == 2 and board["best_val_balanced_accuracy"].is_monotonic_decreasing
    assert run.model_dir == tmp_path / "results" / "demo" / "model" and (run.model_dir / "saved_model").is_dir()
    assert run.report.read_text().startswith("#") and 0 <= run.metrics["accuracy"] <= 1
    assert len(run.members) == 1 and run.info["status"] == "finished"
    predictions = (tmp_path / "predictions.csv").read_text().splitlines()
    assert predictions[0].startswith("image_id,path,dx_pred") and len(predictions) > 100


def test_import_automl_is_cheap_and_names_the_api():
    code = ("import sys, automl; heavy = [m for m in ('tensorflow', 'ray', 'pandas', 'keras') if m in sys.modules]; "
            "print(heavy, callable(automl.ensemble), callable(automl.evaluate), automl.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split(" True True ")[0] == "[]", out
    # The modules that implement the commands do not replace the functions of the same names.
    code = "import automl; from automl.ensemble import evaluate_run; import automl.evaluate; print(automl.ensemble)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.startswith("<function ensemble"), out


def test_bad_input_is_one_line(tmp_path):
    import pytest

    from automl.errors import UserError

    with pytest.raises(UserError, match=r"num_sample: not a spec setting \(known: .*num_samples"):
        automl.api.run("quick", data=tmp_path, name="x", results=tmp_path, num_sample=2)
    with pytest.raises(UserError, match="not a run folder"):
        automl.api.load_run("nothing", results=tmp_path)
    assert not (tmp_path / "x").exists()
