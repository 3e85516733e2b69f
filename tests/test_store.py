import pandas as pd

from automl.layout import RunLayout
from automl.objective import Objective
from automl.store import RunStore


def read_trials(run_dir):
    return RunLayout(run_dir).read_trials()


def read_epochs(run_dir):
    return RunLayout(run_dir).read_epochs()


def metrics(value):
    return {"loss": 1.0, "accuracy": 0.5, "val_balanced_accuracy": value, "val_macro_f1": value / 2,
            "val_accuracy": 0.6, "val_auc": 0.7, "val_loss": 1.2, "learning_rate": 1e-3}


def test_schema_statuses_and_best_values(tmp_path):
    store = RunStore(tmp_path, Objective.of("val_balanced_accuracy"), max_epochs=3)
    store.trial_started("a", {"conv_blocks": 2, "learning_rate": 1e-3})
    store.trial_started("b", {"conv_blocks": 3, "learning_rate": 3e-3})
    for epoch, value in enumerate([0.3, 0.5, 0.4], start=1):
        store.epoch("a", epoch, metrics(value), elapsed_s=epoch * 2.0, info={"hostname": "h", "node_ip": "127.0.0.1"})
    store.epoch("b", 1, metrics(0.2), elapsed_s=2.0, info={"hostname": "h", "node_ip": "127.0.0.1"})
    store.trial_finished("a", "completed")
    store.trial_finished("b", "completed")  # stopped before max_epochs: ASHA pruned it
    store.close()

    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials.loc["a", "status"] == "completed" and trials.loc["b", "status"] == "pruned"
    assert trials.loc["a", "best_epoch"] == 2 and trials.loc["a", "best_val_balanced_accuracy"] == 0.5
    assert trials.loc["a", "last_val_balanced_accuracy"] == 0.4
    assert {"hp_conv_blocks", "hp_learning_rate", "wall_time_s", "hostname", "node_ip", "epochs"} <= set(trials.columns)
    epochs = read_epochs(tmp_path)
    assert list(epochs.columns[:3]) == ["trial_id", "epoch", "elapsed_s"]
    assert len(epochs) == 4 and store.best_value() == 0.5
    assert not list(tmp_path.glob(".*.tmp"))
    # Closed: the two files hold everything, no parts are left.
    assert (tmp_path / "trials.parquet").is_file() and not (tmp_path / "trials-parts").exists()
    assert not (tmp_path / "epochs-parts").exists()


def test_reopened_store_keeps_finished_trials_and_overwrites_repeated_epochs(tmp_path):
    store = RunStore(tmp_path, Objective.of("val_loss"), max_epochs=2)
    store.epoch("a", 1, metrics(0.1), 1.0, {})
    store.trial_finished("a", "errored", "boom")
    store.flush(force=True)  # what the flush interval does; then the driver stops without closing
    again = RunStore(tmp_path, Objective.of("val_loss"), max_epochs=2)
    again.epoch("b", 1, metrics(0.1), 1.0, {})
    again.epoch("b", 1, metrics(0.3), 1.5, {})  # a retried trial repeats epoch 1
    again.flush(force=True)
    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials.loc["a", "status"] == "errored" and trials.loc["a", "error"] == "boom"
    epochs = read_epochs(tmp_path)
    assert len(epochs) == 2
    assert epochs.set_index("trial_id").loc["b", "val_balanced_accuracy"] == 0.3
    assert isinstance(trials, pd.DataFrame)
