import math
import random
import signal
import subprocess
import sys
import time

import pandas as pd

import automl.store
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
    assert len(epochs) == 2 and RunLayout(tmp_path).epochs_trained() == 2  # the repeated epoch counts once
    assert epochs.set_index("trial_id").loc["b", "val_balanced_accuracy"] == 0.3
    assert isinstance(trials, pd.DataFrame)


def parts(folder):
    return sorted(p.name for p in folder.glob("*.parquet"))


def test_flushes_append_only_what_changed_and_readers_see_the_whole_tables(tmp_path):
    store = RunStore(tmp_path, Objective.of("val_balanced_accuracy"), max_epochs=3, flush_every_s=math.inf)
    for trial in ("a", "b", "c"):
        store.trial_started(trial, {"conv_blocks": 2})
        store.epoch(trial, 1, metrics(0.1), 1.0, {})
    store.flush(force=True)  # the first batch of a table is its base file
    assert (tmp_path / "trials.parquet").is_file() and not (tmp_path / "trials-parts").exists()
    store.epoch("b", 2, metrics(0.6), 2.0, {})
    store.trial_finished("c", "errored", "boom")
    store.flush(force=True)
    (trial_part,), (epoch_part,) = parts(tmp_path / "trials-parts"), parts(tmp_path / "epochs-parts")
    assert set(pd.read_parquet(tmp_path / "trials-parts" / trial_part)["trial_id"]) == {"b", "c"}  # a is unchanged
    assert len(pd.read_parquet(tmp_path / "epochs-parts" / epoch_part)) == 1
    trials, epochs = read_trials(tmp_path), read_epochs(tmp_path)
    assert list(trials["trial_id"]) == ["a", "b", "c"]  # in the order trials started, each once, as last written
    assert list(trials.columns[:4]) == ["trial_id", "status", "epochs", "best_epoch"]
    rows = trials.set_index("trial_id")
    assert rows.loc["b", "best_val_balanced_accuracy"] == 0.6 and rows.loc["c", "status"] == "errored"
    assert list(zip(epochs["trial_id"], epochs["epoch"], strict=True)) == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    store.close()
    assert read_trials(tmp_path).equals(trials) and read_epochs(tmp_path).equals(epochs)
    assert not (tmp_path / "trials-parts").exists() and not (tmp_path / "epochs-parts").exists()


def test_parts_merge_eight_at_a_time_and_a_crash_mid_merge_leaves_nothing_twice(tmp_path):
    store = RunStore(tmp_path, Objective.of("val_loss"), max_epochs=200, flush_every_s=math.inf)
    store.trial_started("t", {"conv_blocks": 2})
    for epoch in range(1, 1 + 1 + 8 * 8 + 3):  # the base, 64 parts merged twice over, 3 parts
        store.epoch("t", epoch, metrics(0.5), float(epoch), {})
        store.flush(force=True)
    assert parts(tmp_path / "epochs-parts") == ["0000000001-0000000064.parquet", "0000000065-0000000065.parquet",
                                                "0000000066-0000000066.parquet", "0000000067-0000000067.parquet"]
    assert list(read_epochs(tmp_path)["epoch"]) == list(range(1, 69))
    # The process dies in a merge that wrote its part but had not deleted the parts it holds: readers skip those.
    automl.store._OPEN.clear()
    folder = tmp_path / "epochs-parts"
    merged = pd.concat([pd.read_parquet(folder / f"00000000{n}-00000000{n}.parquet") for n in (65, 66, 67)])
    merged.to_parquet(folder / "0000000065-0000000067.parquet")
    assert list(read_epochs(tmp_path)["epoch"]) == list(range(1, 69))
    again = RunStore(tmp_path, Objective.of("val_loss"), max_epochs=200)  # the next writer removes the leftovers
    assert parts(folder) == ["0000000001-0000000064.parquet", "0000000065-0000000067.parquet"]
    again.close()
    assert list(read_epochs(tmp_path)["epoch"]) == list(range(1, 69))


def test_incremental_summaries_match_a_full_recount(tmp_path):
    """Each trial's best and last epoch, the run's best and the finished count, kept as reports arrive, equal what
    the whole table says, retried trials repeating epochs included."""
    rng = random.Random(0)
    objective = Objective.of("val_loss")
    store = RunStore(tmp_path, objective, max_epochs=5, flush_every_s=0.0)
    for trial in range(30):
        store.trial_started(f"t{trial}", {"conv_blocks": 2})
        epoch = 0
        while epoch < 5 and rng.random() > 0.15:
            epoch = epoch - 1 if epoch > 1 and rng.random() < 0.2 else epoch + 1  # sometimes a retry repeats one
            store.epoch(f"t{trial}", epoch, metrics(rng.random()) | {"val_loss": rng.random()}, 1.0, {})
        if trial % 3:
            store.trial_finished(f"t{trial}", "completed")
    store.close()
    epochs, trials = read_epochs(tmp_path), read_trials(tmp_path).set_index("trial_id")
    for trial_id, rows in epochs.groupby("trial_id"):
        best = rows.loc[rows["val_loss"].idxmin()]
        assert trials.loc[trial_id, "best_epoch"] == best["epoch"]
        assert trials.loc[trial_id, "last_val_loss"] == rows.sort_values("epoch")["val_loss"].iloc[-1]
    assert store.best_value() == epochs["val_loss"].min()
    assert store.finished_count() == (trials["status"] != "running").sum() == 20
    reopened = RunStore(tmp_path, objective, max_epochs=5)
    assert reopened.best_value() == store.best_value() and reopened.finished_count() == 20


def test_what_each_trial_cost_is_recorded_from_its_reports(tmp_path):
    """Parameters, the median seconds of an epoch and the samples seen, as the engines report them: ``epoch_s`` and
    ``samples_seen`` when the trainer gives them, else seconds from ``elapsed_s`` (which a reopened store continues)."""
    store = RunStore(tmp_path, Objective.of("val_balanced_accuracy"), max_epochs=4, flush_every_s=math.inf)
    store.trial_started("timed", {"conv_blocks": 2})
    for epoch, (elapsed, seconds) in enumerate([(9.0, 6.0), (10.0, 1.0), (14.0, 4.0)], start=1):
        report = metrics(0.5) | {"parameters": 1_234_567, "epoch_s": seconds, "samples_seen": 700 * epoch}
        store.epoch("timed", epoch, report, elapsed, {"hostname": "h"})
    store.trial_started("untimed", {"conv_blocks": 3})  # a trainer that reports neither epoch_s nor samples_seen
    for epoch, elapsed in enumerate([5.0, 7.0, 10.0], start=1):
        store.epoch("untimed", epoch, metrics(0.4) | {"parameters": 8_000}, elapsed, {})
    store.trial_started("bare", {"conv_blocks": 1})  # an engine that reports no cost at all
    store.epoch("bare", 1, metrics(0.3), 0.0, {})
    store.flush(force=True)

    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials.loc["timed", "parameters"] == 1_234_567 and trials.loc["untimed", "parameters"] == 8_000
    assert trials.loc["timed", "seconds_per_epoch"] == 4.0  # the median of 6, 1, 4: elapsed_s is not used
    assert trials.loc["untimed", "seconds_per_epoch"] == 3.0  # the median of 5, 2, 3
    assert trials.loc["timed", "samples_seen"] == 2100 and pd.isna(trials.loc["untimed", "samples_seen"])
    assert pd.isna(trials.loc["bare", "parameters"]) and trials.loc["bare", "seconds_per_epoch"] == 0.0
    epochs = read_epochs(tmp_path).set_index(["trial_id", "epoch"])
    assert list(epochs.loc["timed", "epoch_s"]) == [6.0, 1.0, 4.0]
    assert list(epochs.loc["timed", "samples_seen"]) == [700, 1400, 2100]
    assert epochs.loc["untimed", "epoch_s"].isna().all()  # not made up per epoch: only the trial's median is derived

    # The driver stops without closing; the search resumes and the running trial goes on.
    automl.store._OPEN.clear()
    again = RunStore(tmp_path, Objective.of("val_balanced_accuracy"), max_epochs=4)
    again.epoch("untimed", 4, metrics(0.4) | {"parameters": 8_000}, 11.0, {})  # epochs of 5, 2, 3 and 1 s
    again.epoch("timed", 3, metrics(0.6) | {"epoch_s": 8.0, "samples_seen": 2100}, 18.0, {})  # a retry repeats 3
    again.close()
    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials.loc["untimed", "seconds_per_epoch"] == 2.5 and trials.loc["timed", "seconds_per_epoch"] == 6.0
    assert trials.loc["timed", "parameters"] == 1_234_567  # kept from the earlier reports


def test_a_store_written_before_parts_existed_is_read_and_continued(tmp_path):
    """The two files as the earlier store wrote them (pandas, no parts): read as they are, then appended to."""
    pd.DataFrame([{"trial_id": "old", "status": "completed", "epochs": 2, "hp_conv_blocks": 3,
                   "best_val_balanced_accuracy": 0.4}]).to_parquet(tmp_path / "trials.parquet", index=False)
    pd.DataFrame([{"trial_id": "old", "epoch": e, "val_balanced_accuracy": 0.4} for e in (1, 2)]).to_parquet(
        tmp_path / "epochs.parquet", index=False)
    store = RunStore(tmp_path, Objective.of("val_balanced_accuracy"), max_epochs=2)
    assert store.best_value() == 0.4 and store.finished_count() == 1
    store.trial_started("new", {"conv_blocks": 2, "optimizer": "adam"})
    store.epoch("new", 1, metrics(0.7), 1.0, {})
    store.flush(force=True)
    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials.loc["new", "hp_optimizer"] == "adam" and pd.isna(trials.loc["old", "hp_optimizer"])
    assert trials.loc["new", "seconds_per_epoch"] == 1.0 and pd.isna(trials.loc["old", "seconds_per_epoch"])
    assert list(trials["hp_conv_blocks"]) == [3, 2] and len(read_epochs(tmp_path)) == 3
    store.close()
    assert len(read_trials(tmp_path)) == 2


WRITER = """
import math, sys, time
from pathlib import Path
from automl.objective import Objective
from automl.store import RunStore
store = RunStore(Path(sys.argv[1]), Objective.of("val_loss"), max_epochs=10**6, flush_every_s=0.01)
trial = 0
while True:
    trial += 1
    store.trial_started(f"t{trial:05d}", {"conv_blocks": 2})
    for epoch in range(1, 4):
        store.epoch(f"t{trial:05d}", epoch, {"val_loss": 1.0 / epoch}, float(epoch), {})
    store.trial_finished(f"t{trial:05d}", "completed")
    time.sleep(0.002)
"""


def test_readers_of_a_live_store_never_see_a_torn_table_and_a_killed_writer_loses_only_its_last_batch(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    try:
        seen, deadline = pd.DataFrame(), time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 300:
            if not RunLayout(tmp_path).trial_table.exists():
                continue
            if not RunLayout(tmp_path).epoch_table.exists():
                continue  # the first trial started, no epoch yet
            trials, epochs = read_trials(tmp_path), read_epochs(tmp_path)
            assert trials["trial_id"].is_unique and not epochs.duplicated(["trial_id", "epoch"]).any()
            assert set(seen["trial_id"] if len(seen) else []) <= set(trials["trial_id"])  # nothing disappears
            assert all(epochs.groupby("trial_id")["epoch"].apply(lambda e: list(e) == list(range(1, len(e) + 1))))
            seen = trials
        assert len(seen) >= 300, "the writer did not get far enough"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    after = RunStore(tmp_path, Objective.of("val_loss"), max_epochs=10**6)
    assert set(seen["trial_id"]) <= set(after.trials)  # what a reader saw before the kill is still there
    finished = [t for t, r in after.trials.items() if r["status"] != "running"]
    assert len(finished) >= len(after.trials) - 2  # only the last trial or two were cut short by the kill
