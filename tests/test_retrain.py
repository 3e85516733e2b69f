"""Which search trials ``automl retrain`` trains again: ranking, filtering and hyperparameter types from the store."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from automl.errors import UserError
from automl.objective import Objective
from automl.retrain import top_configurations
from automl.store import RunStore


def write_run(run_dir, metric: str, mode: str, rows: list[dict]):
    """A search's run folder as the store leaves it: run.json plus trials.parquet."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"name": run_dir.name, "metric": metric, "mode": mode}))
    pd.DataFrame(rows).to_parquet(run_dir / "trials.parquet", index=False)
    return run_dir


def trial(trial_id: str, status: str, score: float | None, column: str = "best_val_balanced_accuracy", **hps):
    return {"trial_id": trial_id, "status": status, column: score, **{f"hp_{k}": v for k, v in hps.items()}}


def test_top_k_by_a_max_metric_counts_pruned_trials_and_skips_unfinished_ones(tmp_path):
    run = write_run(tmp_path / "run", "val_balanced_accuracy", "max", [
        trial("a", "completed", 0.40, conv_blocks=2),
        trial("b", "pruned", 0.70, conv_blocks=3),  # stopped early by ASHA, but its score counts
        trial("c", "errored", 0.90, conv_blocks=4),  # failed after scoring: not a configuration to trust
        trial("d", "running", 0.95, conv_blocks=2),  # not finished: its best may still change
        trial("e", "completed", None, conv_blocks=1),  # never finished an epoch
        trial("f", "completed", 0.55, conv_blocks=2),
    ])

    top = top_configurations(run, top_k=2)

    assert [(c["trial_id"], c["score"]) for c in top] == [("b", 0.70), ("f", 0.55)]
    assert top[0]["params"] == {"conv_blocks": 3}
    assert [c["trial_id"] for c in top_configurations(run, top_k=10)] == ["b", "f", "a"]


def test_top_k_by_a_min_metric_ranks_lowest_first(tmp_path):
    run = write_run(tmp_path / "run", "val_loss", "min", [
        trial("a", "completed", 0.9, column="best_val_loss", conv_blocks=2),
        trial("b", "pruned", 1.4, column="best_val_loss", conv_blocks=3),
        trial("c", "completed", 0.6, column="best_val_loss", conv_blocks=4),
        trial("d", "errored", 0.1, column="best_val_loss", conv_blocks=1),
    ])

    top = top_configurations(run, top_k=2)

    assert [(c["trial_id"], c["score"]) for c in top] == [("c", 0.6), ("a", 0.9)]


def test_int_hyperparameters_with_gaps_come_back_as_ints_and_missing_conditionals_are_dropped(tmp_path):
    # dense_units_2 and block_dropout_3 exist only when their condition held, so parquet stores
    # the int column as float64 with NaN gaps; a builder given 256.0 units or a NaN dropout would fail.
    run = write_run(tmp_path / "run", "val_balanced_accuracy", "max", [
        trial("deep", "completed", 0.8, conv_blocks=3, dense_layers=2, dense_units_2=256, block_dropout_3=0.25,
              learning_rate=1e-3, optimizer="adam", batch_norm=True),
        trial("shallow", "completed", 0.7, conv_blocks=2, dense_layers=1, dense_units_2=None,
              block_dropout_3=None, learning_rate=3e-4, optimizer="sgd", batch_norm=False),
    ])
    assert pd.read_parquet(run / "trials.parquet")["hp_dense_units_2"].dtype == "float64"

    deep, shallow = top_configurations(run, top_k=2)

    assert deep["params"] == {"conv_blocks": 3, "dense_layers": 2, "dense_units_2": 256, "block_dropout_3": 0.25,
                              "learning_rate": 1e-3, "optimizer": "adam", "batch_norm": True}
    assert type(deep["params"]["dense_units_2"]) is int and type(deep["params"]["conv_blocks"]) is int
    assert type(deep["params"]["block_dropout_3"]) is float and type(deep["params"]["batch_norm"]) is bool
    assert shallow["params"] == {"conv_blocks": 2, "dense_layers": 1, "learning_rate": 3e-4, "optimizer": "sgd",
                                 "batch_norm": False}
    assert not any(isinstance(v, float) and math.isnan(v) for c in (deep, shallow) for v in c["params"].values())


def test_reads_the_folder_a_run_store_writes(tmp_path):
    store = RunStore(tmp_path / "run", Objective.of("val_balanced_accuracy", "max"), max_epochs=2)
    store.trial_started("t1", {"conv_blocks": 4, "filters_4": 128})
    store.trial_started("t2", {"conv_blocks": 2})
    for trial_id, value in (("t1", 0.3), ("t2", 0.5)):
        for epoch in (1, 2):
            store.epoch(trial_id, epoch, {"val_balanced_accuracy": value + epoch / 10}, elapsed_s=epoch, info={})
        store.trial_finished(trial_id, "completed")
    store.close()  # the store writes in batches: close() writes what is left and compacts the tables
    (tmp_path / "run" / "run.json").write_text(json.dumps({"metric": "val_balanced_accuracy", "mode": "max"}))

    top = top_configurations(tmp_path / "run", top_k=5)

    assert [(c["trial_id"], c["score"]) for c in top] == [("t2", pytest.approx(0.7)), ("t1", pytest.approx(0.5))]
    assert top[0]["params"] == {"conv_blocks": 2}
    assert top[1]["params"] == {"conv_blocks": 4, "filters_4": 128} and type(top[1]["params"]["filters_4"]) is int


@pytest.mark.parametrize("rows", [
    [trial("a", "errored", 0.5), trial("b", "running", 0.6)],
    [trial("a", "completed", None), trial("b", "pruned", None)],
], ids=["no finished trial", "no scored trial"])
def test_nothing_usable_is_a_user_error(tmp_path, rows):
    run = write_run(tmp_path / "run", "val_balanced_accuracy", "max", rows)
    with pytest.raises(UserError, match="nothing to retrain"):
        top_configurations(run, top_k=3)


def test_a_retrain_run_again_goes_on_from_each_members_last_epoch(tiny_ham, tmp_path, monkeypatch):
    import importlib

    from automl.layout import RunLayout
    from automl.retrain import retrain
    from automl.search import run_search
    from automl.spec import parse_spec

    retrain_module = importlib.import_module("automl.retrain")  # automl.retrain itself is the API function
    spec = parse_spec({"data": {"image_size": 16}, "training": {"early_stopping_patience": 0},
                       "hyperparameters": {"conv_blocks": 1, "base_filters": {"choice": [4, 8]}, "dense_units": 8,
                                           "batch_size": 32},
                       "search": {"searcher": "random", "scheduler": "none", "num_samples": 2, "max_epochs": 1,
                                  "grace_period": 1, "max_failures": 0}})
    run_dir = run_search(spec, tiny_ham, "resumable", tmp_path / "results")
    reported, failed = tmp_path / "reported", tmp_path / "failed"
    real = retrain_module.train_member

    def fails_once_at_epoch_2(config, **kwargs):
        """The real member trainer, except that its epoch-2 report raises the first time (a crashed worker)."""
        from ray import tune

        report = tune.report

        def recorded(metrics, checkpoint=None):
            if "epoch_s" in metrics:  # an epoch's report, with that epoch's checkpoint
                if metrics["epoch"] == 2 and not failed.exists():
                    failed.touch()
                    raise RuntimeError("injected crash at epoch 2")
                with open(reported, "a") as f:
                    f.write(f"{metrics['epoch']}\n")
            return report(metrics, checkpoint=checkpoint)

        tune.report = recorded
        try:
            return real(config, **kwargs)
        finally:
            tune.report = report

    monkeypatch.setattr(retrain_module, "train_member", fails_once_at_epoch_2)
    with pytest.raises(UserError, match="every retrained member failed"):
        retrain(run_dir, tiny_ham, top_k=1, seeds=1, epochs=3)
    assert (run_dir / RunLayout.members_experiment("retrain")).is_dir()  # its checkpoints wait for the rerun
    retrain(run_dir, tiny_ham, top_k=1, seeds=1, epochs=3)
    # Epoch 1 was not trained again: the rerun went on from its checkpoint.
    assert reported.read_text().split() == ["1", "2", "3"]
    members = RunLayout(run_dir).read_members()
    assert members["epochs"].tolist() == [3] and members["image_size"].tolist() == ["16x16"]
    assert not (run_dir / RunLayout.members_experiment("retrain")).exists()  # gone once the members are collected


def test_configurations_too_big_at_the_retrain_size_are_left_out_and_named(tiny_ham, capsys):
    from automl.data import load_dataset
    from automl.retrain import trainable_at
    from automl.spec import parse_spec

    spec = parse_spec({"data": {"image_size": 16}, "training": {"max_parameters": 20_000}})
    dataset = load_dataset(tiny_ham, image_size=(16, 16))
    # A flatten head grows with the image: 4x4x8 x 64 units fits at 8 px, 8x8x8 x 64 (32,768 weights) not at 16 px.
    flatten = {"conv_blocks": 1, "base_filters": 8, "head": "flatten", "dense_units": 64}
    gap = flatten | {"head": "gap"}
    configs = [{"trial_id": "big", "params": flatten}, {"trial_id": "a", "params": gap},
               {"trial_id": "b", "params": gap | {"dense_units": 32}}]
    assert [c["trial_id"] for c in trainable_at(configs, spec, dataset, top_k=2)] == ["a", "b"]
    assert "left out 1 of the search's best configurations that cannot be trained at 16x16: trial big" in (
        capsys.readouterr().err)
