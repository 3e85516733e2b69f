"""The ``automl`` command as a user meets it: real runs on tiny data, and one clear line for bad input."""

import json
import re
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


def _commands(parser):
    """Every (command path, parser) under ``automl``: run, submit, jobs list, ..."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, sub))
                found += [(f"{name} {inner}", p) for inner, p in _commands(sub)]
    return found


def test_every_flag_has_help_and_a_metavar_that_reads_as_a_word():
    import argparse

    from automl.cli import build_parser

    missing, unreadable = [], []
    for name, parser in _commands(build_parser()):
        for action in parser._actions:
            skipped = isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
            if skipped or action.help == argparse.SUPPRESS:
                continue
            label = f"automl {name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(label)
            if action.option_strings and action.nargs != 0 and not action.choices and not isinstance(
                    action, argparse.BooleanOptionalAction):
                if action.metavar is None and ("_" in action.dest):
                    unreadable.append(f"{label}: {action.dest.upper()}")
                if action.metavar and "__" in action.metavar:
                    unreadable.append(f"{label}: {action.metavar}")
    assert missing == [] and unreadable == []
    run_help = build_parser().parse_args(["run", "quick", "--data", "d", "--name", "n"])  # parses; now the text
    assert run_help.command == "run"


def test_help_says_what_run_does_and_every_spec_flag_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "search, retrain the best, ensemble them (judged on the test split) and export the model" in text
    assert "evaluate" not in text.split("options:")[0]
    assert "--num-samples N" in text and "[search.num_samples; default: the spec's value, else 20]" in text
    assert "--tpe-constant-liar, --no-tpe-constant-liar" in text and "SEARCH__" not in text
    assert "--search-seed N" in text and not re.search(r"(?<![\w-])--seed\b(?!s)", text)
    with pytest.raises(SystemExit):
        main(["retrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "epoch budget" not in text and "maximum epochs per member" in text


def test_version(capsys):
    from automl import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"automl {__version__}"


def test_old_spellings_still_work_for_one_release_with_one_line_each(capsys):
    from automl.cli import _old_boolean_values, build_parser

    argv = ["search", "quick", "--data", "d", "--name", "n", "--seed", "7", "--tpe-constant-liar", "false"]
    args = build_parser().parse_args(_old_boolean_values(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert (args.search__seed, args.search__tpe_constant_liar) == (7, False)
    assert err == ["automl: --tpe-constant-liar false is now --no-tpe-constant-liar (the old spelling goes in the "
                   "next release)",
                   "automl: --seed is now --search-seed here (the old spelling goes in the next release)"]
    args = build_parser().parse_args(["search", "quick", "--data", "d", "--name", "n", "--tpe-constant-liar"])
    assert args.search__tpe_constant_liar is True and capsys.readouterr().err == ""
    # train's --seed is the training seed, as before: no note.
    args = build_parser().parse_args(["train", "quick", "--data", "d", "--seed", "3"])
    assert args.training__seed == 3 and capsys.readouterr().err == ""


def test_check_describes_a_space_and_measures_an_epoch(tmp_path, capsys):
    spec = tmp_path / "deep.yaml"
    spec.write_text("hyperparameters:\n  conv_blocks: {choice: [2, 5]}\n  base_filters: {choice: [8, 16]}\n"
                    "  dense_units: 16\n  batch_size: 32\n"
                    "  block_dropout_5: {float: [0.1, 0.2], when: 'conv_blocks >= 5'}\n")
    code, out, err = run_cli(["check", spec, "--draws", "200"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("dimensions: 3 searched, 2 fixed")
    assert "conditions: 1 (block_dropout_5 when conv_blocks >= 5)" in out
    # conv_blocks 5 pools 28 px down to nothing: about half the draws cannot run, by the pooling rule.
    [feasible] = [line for line in lines if line.startswith("feasible draws at 28x28: ")]
    share = int(feasible.split(": ")[1].split(" of ")[0])
    assert 60 < share < 140 and "rejected by reason: pooling" in feasible, feasible
    [params] = [line for line in lines if line.startswith("parameters over")]
    low, high = (int(params.split(kind)[1].split(",")[0].split()[0].replace(",", "")) for kind in (" min ", " max "))
    assert 0 < low < high
    [timing] = [line for line in lines if line.startswith("seconds per epoch on this machine: ")]
    assert float(timing.split("smallest draw")[1].split(") ")[1].split(" s")[0]) > 0
    code, out, _ = run_cli(["check", "quick", "--image-size", "8", "--draws", "50", "--no-timing"], capsys)
    assert code == 0 and "feasible draws at 8x8: " in out and "seconds per epoch" not in out
