"""Real searches on embedded local Ray (and KerasTuner) over tiny generated data."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest

from automl.cli import main
from automl.layout import RunLayout
from automl.search import run_search
from automl.search._feasible import MAX_REDRAWS
from automl.search._ray import ORPHANED, CandidateTrainable, EpochBudget
from automl.search._searchers import INFEASIBLE, searcher
from automl.spec import load_spec, search_overrides


def read_trials(run_dir):
    return RunLayout(run_dir).read_trials()


def read_epochs(run_dir):
    return RunLayout(run_dir).read_epochs()


def read_run_info(run_dir):
    return RunLayout(run_dir).read_info()

TINY_SEARCH = """
name: tiny_search
data: {image_size: 16}
hyperparameters:
  conv_blocks: {choice: [1, 2]}
  base_filters: {choice: [4, 8]}
  block_dropout_2: {float: [0.0, 0.3], when: "conv_blocks >= 2"}
  dense_units: 16
  learning_rate: {float: [1.0e-3, 1.0e-2], log: true}
  batch_size: 32
  imbalance: {choice: [none, class_weight]}
  batch_norm: {choice: [true, false]}
search:
  num_samples: 4
  max_epochs: 3
  grace_period: 1
  reduction_factor: 2
  max_concurrent: 2
  resources: {cpu: 1}
"""
FINISHED = {"completed", "pruned", "errored"}
# At 16 px, five blocks of pool 2 leave nothing (16 -> 8 -> 4 -> 2 -> 1 -> 0): about half the draws are infeasible.
PARTLY_INFEASIBLE = TINY_SEARCH.replace("conv_blocks: {choice: [1, 2]}", "conv_blocks: {choice: [1, 5]}")


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny_search.yaml"
    path.write_text(TINY_SEARCH)
    return path


@pytest.fixture
def partly_infeasible_spec(tmp_path):
    path = tmp_path / "partly_infeasible.yaml"
    path.write_text(PARTLY_INFEASIBLE)
    return path


def check_store(run_dir, num_samples, max_epochs):
    trials, epochs = read_trials(run_dir), read_epochs(run_dir)
    assert len(trials) == num_samples
    assert set(trials["status"]) <= FINISHED and (trials["status"] == "completed").any()
    assert (trials["epochs"] <= max_epochs).all()
    # Every epoch a trial ran is in epochs.parquet, once.
    assert len(epochs) == trials["epochs"].sum()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert {"hp_conv_blocks", "hp_learning_rate", "best_val_balanced_accuracy", "node_ip", "wall_time_s"} <= set(trials)
    check_costs(trials)
    # A conditional hyperparameter is recorded only where its condition held.
    one_block = trials["hp_conv_blocks"] == 1
    assert trials.loc[one_block, "hp_block_dropout_2"].isna().all()
    assert read_run_info(run_dir)["status"] == "finished"
    return trials


def check_costs(trials):
    """Every trial that trained recorded its model's size and its seconds per epoch."""
    trained = trials[trials["epochs"] > 0]
    assert (trained["parameters"] > 100).all() and (trained["seconds_per_epoch"] > 0).all()
    assert (trained["seconds_per_epoch"] <= trained["wall_time_s"]).all()


def test_optuna_asha_search(tiny_ham, tiny_spec, tmp_path):
    spec = load_spec(tiny_spec)
    run_dir = run_search(spec, tiny_ham, "optuna_asha", tmp_path / "results")
    trials = check_store(run_dir, 4, 3)
    study = optuna.load_study(study_name="optuna_asha", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert len(study.trials) == 4  # optuna-dashboard can open the run's study
    assert trials["status"].isin(["completed", "pruned"]).all()
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "auto"  # the experiment snapshot period Tune was given
    # Finished trials keep no checkpoints (a search of thousands of trials would fill the disk with them).
    assert not list((run_dir / RunLayout.ray_dir_name).rglob("checkpoint_*"))


def test_random_asha_search_retries_a_failed_trial_from_its_checkpoint(tiny_ham, tiny_spec, tmp_path):
    faults = str(tmp_path / "faults")

    class FailsOnceAtEpoch2(CandidateTrainable):
        """The engine's trainable, except that each trial raises once at its second epoch (a marker file per trial)."""

        def step(self):
            marker = Path(faults) / self.trial_id
            if self.runner is not None and self.runner.epochs_done == 1 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                raise RuntimeError(f"injected fault in trial {self.trial_id} at epoch 2")
            return super().step()

    spec = load_spec(tiny_spec).with_overrides(search_overrides({"searcher": "random", "num_samples": 3,
                                                                 "scheduler": "none"}))
    run_dir = run_search(spec, tiny_ham, "random_fault", tmp_path / "results", trainable=FailsOnceAtEpoch2)
    trials = check_store(run_dir, 3, 3)
    # Every trial failed once at epoch 2, resumed from its epoch-1 checkpoint and still finished.
    assert (trials["status"] == "completed").all()
    assert (trials["retries"] == 1).all() and (trials["restored_from_epoch"] == 1).all()
    assert len(list((tmp_path / "faults").iterdir())) == 3


def test_a_trial_gathers_its_batches_from_the_shared_decode_cache_and_copies_no_split(tiny_ham, tiny_spec, tmp_path):
    import json

    import numpy as np

    seen = tmp_path / "seen"

    class Inspected(CandidateTrainable):
        """The engine's trainable, writing down after its first epoch what its images are and where its splits point."""

        def step(self):
            result = super().step()
            images, batches = self.dataset.images, self.runner.batches
            validation = next(c for c in self.runner.callbacks if type(c).__name__ == "ValidationMetrics")
            arrays = [a for a in (*vars(batches).values(), *vars(validation).values()) if isinstance(a, np.ndarray)]
            private = sum(a.nbytes for a in arrays if a is not images and a.ndim > 1)
            seen.mkdir(exist_ok=True)
            (seen / f"{self.trial_id}.json").write_text(json.dumps({
                "memmap": isinstance(images, np.memmap), "file": str(images.filename),
                "same_array": batches.images is images and validation.images is images,
                "index_arrays": [a.dtype.kind for a in (batches.rows, validation.rows)],
                "private_image_bytes": int(private), "dataset_bytes": int(images.nbytes)}))
            return result

    spec = load_spec(tiny_spec).with_overrides(search_overrides({"searcher": "random", "num_samples": 2,
                                                                 "scheduler": "none", "max_epochs": 1}))
    run_dir = run_search(spec, tiny_ham, "shared", tmp_path / "results", trainable=Inspected)
    assert read_trials(run_dir)["image_size"].tolist() == ["16x16", "16x16"]  # each trial's size, beside its cost
    records = [json.loads(p.read_text()) for p in seen.iterdir()]
    assert len(records) == 2
    for record in records:
        # The worker mapped the driver's decode cache file (embedded Ray runs on this machine): no copy of its own.
        assert record["memmap"] and record["file"].startswith(os.environ["AUTOML_CACHE_DIR"])
        assert record["same_array"] and record["index_arrays"] == ["i", "i"]
        assert record["private_image_bytes"] == 0


def test_driver_killed_then_resumed_keeps_finished_trials(tiny_ham, tiny_spec, tmp_path):
    results = tmp_path / "results"
    run_dir = results / "killed"
    args = [sys.executable, "-m", "automl", "search", str(tiny_spec), "--data", str(tiny_ham), "--name", "killed",
            "--results", str(results), "--num-samples", "6", "--max-concurrent", "1", "--searcher", "random"]
    # Its own session, so the driver and the local Ray it started die together, like a lost machine.
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, finished_before = time.monotonic() + 240, set()
    try:
        while time.monotonic() < deadline and not finished_before:
            time.sleep(1)
            if (run_dir / "trials.parquet").is_file():
                trials = read_trials(run_dir)
                finished_before = set(trials.loc[trials["status"].isin(FINISHED), "trial_id"])
            assert driver.poll() is None, "search ended before it could be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert finished_before, "no trial finished within 240 s"

    code = main(["search", str(tiny_spec), "--data", str(tiny_ham), "--name", "killed", "--results", str(results),
                 "--resume"])
    assert code == 0
    after = read_trials(run_dir)
    assert finished_before <= set(after["trial_id"])  # no finished trial lost
    # Trials that started after Tune's last experiment snapshot are unknown to the resumed Tune, which samples others
    # in their place: one still running was lost with the driver (recorded as such), one finished is kept.
    orphans = after["error"] == ORPHANED
    assert (after.loc[orphans, "status"] == "errored").all() and orphans.sum() <= 1
    after_snapshot = read_run_info(run_dir)["after_snapshot"]
    assert after_snapshot["orphaned"] == sorted(after.loc[orphans, "trial_id"])
    kept = after["trial_id"].isin(after_snapshot["finished_kept"])
    assert after.loc[kept, "status"].isin({"completed", "pruned"}).all()
    assert after["status"].isin(FINISHED).all()
    assert len(after) == 6 + orphans.sum() + len(after_snapshot["finished_kept"])


def test_keras_tuner_engine_writes_the_same_store(tiny_ham, partly_infeasible_spec, tmp_path):
    spec = load_spec(partly_infeasible_spec).with_overrides(search_overrides({"engine": "keras-tuner",
                                                                              "keras_tuner": "hyperband"}))
    run_dir = run_search(spec, tiny_ham, "kt", tmp_path / "results")
    trials, epochs, info = read_trials(run_dir), read_epochs(run_dir), read_run_info(run_dir)
    assert len(trials) >= 2 and set(trials["status"]) <= FINISHED
    assert len(epochs) >= len(trials) and info["epochs_spent"] == len(epochs)
    assert (run_dir / "keras_tuner").is_dir()
    check_costs(trials)
    assert (epochs["epoch_s"] > 0).all()  # timed by the engine's callback
    # KerasTuner's random draws are redrawn when they cannot run, too: no trial for them, their count recorded.
    assert (trials["hp_conv_blocks"] == 1).all() and not (trials["status"] == "errored").any()
    assert info["infeasible_draws"]["rejected"] >= 1


def test_keras_tuner_bayesian_starts_its_gaussian_process_after_the_products_start_up_trials(tiny_ham, tiny_spec,
                                                                                             tmp_path):
    import json

    spec = load_spec(tiny_spec).with_overrides(search_overrides({"engine": "keras-tuner", "keras_tuner": "bayesian",
                                                                 "num_samples": 3, "max_epochs": 1}))
    run_dir = run_search(spec, tiny_ham, "kt_bayes", tmp_path / "results")
    assert len(read_trials(run_dir)) == 3
    oracle = json.loads((run_dir / RunLayout.keras_tuner_dir_name / "oracle.json").read_text())
    # Not KerasTuner's default of 3 random trials per hyperparameter: the product's start-up rule.
    assert oracle["num_initial_points"] == spec.search.tpe_startup() == 5


def test_keras_tuner_bayesian_is_told_its_infeasible_proposals_without_a_trial(tiny_ham, partly_infeasible_spec,
                                                                                tmp_path):
    spec = load_spec(partly_infeasible_spec).with_overrides(search_overrides(
        {"engine": "keras-tuner", "keras_tuner": "bayesian", "num_samples": 6, "max_epochs": 1,
         "tpe_startup_trials": 2}))
    run_dir = run_search(spec, tiny_ham, "kt_bayes_feasible", tmp_path / "results")
    trials, info = read_trials(run_dir), read_run_info(run_dir)
    # 4 trials from the Gaussian process, which first proposes 5 blocks (unexplored by the start-up draws): told
    # as the worst result and proposed again, not trained as errored trials.
    assert len(trials) == 6 and (trials["status"] == "completed").all() and (trials["hp_conv_blocks"] == 1).all()
    assert info["infeasible_draws"]["rejected"] >= 1


def test_time_budget_ends_a_search_as_finished(tiny_ham, tiny_spec, tmp_path):
    spec = load_spec(tiny_spec).with_overrides(search_overrides({"num_samples": 1000, "max_epochs": 50,
                                                                 "scheduler": "none", "time_budget_s": 45}))
    run_dir = run_search(spec, tiny_ham, "budget", tmp_path / "results")
    trials = read_trials(run_dir)
    assert read_run_info(run_dir)["status"] == "finished"
    assert 1 <= len(trials) < 1000 and set(trials["status"]) <= FINISHED  # cut-short trials count as pruned


def test_existing_name_needs_resume_and_resume_needs_a_run(tiny_ham, tiny_spec, tmp_path, capsys):
    results = tmp_path / "results"
    (results / "taken").mkdir(parents=True)
    (results / "taken" / "run.json").write_text("{}")
    assert main(["search", str(tiny_spec), "--data", str(tiny_ham), "--name", "taken", "--results", str(results)]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert main(["search", str(tiny_spec), "--data", str(tiny_ham), "--name", "nothing", "--results", str(results),
                 "--resume"]) == 2
    assert "no search to resume here" in capsys.readouterr().err


def test_infeasible_draws_take_no_trial_and_optuna_is_told(tiny_ham, partly_infeasible_spec, tmp_path):
    spec = load_spec(partly_infeasible_spec).with_overrides(search_overrides({"num_samples": 4, "max_epochs": 1,
                                                                              "scheduler": "none"}))
    run_dir = run_search(spec, tiny_ham, "feasible", tmp_path / "results")
    trials, info = read_trials(run_dir), read_run_info(run_dir)
    # Every trial is a candidate that runs: none started only to report that it cannot.
    assert len(trials) == 4 and (trials["status"] == "completed").all() and (trials["hp_conv_blocks"] == 1).all()
    rejected = info["infeasible_draws"]
    assert rejected["rejected"] >= 1 and rejected["by_reason"] == {"pooling": rejected["rejected"]}
    # Optuna's study has every rejected draw, told at once as infeasible, beside the 4 real trials.
    study = optuna.load_study(study_name="feasible", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    told = [t for t in study.trials if INFEASIBLE in t.user_attrs]
    assert len(told) == rejected["rejected"] and len(study.trials) == 4 + len(told)
    assert all(t.params["conv_blocks"] == 5 and t.constraints == {INFEASIBLE: 1.0} for t in told)
    assert study.best_trial.params["conv_blocks"] == 1  # the worst value they were told never makes them best
    assert info["epochs_spent"] == 4


def test_epoch_budget_ends_a_random_search_as_finished(tiny_ham, partly_infeasible_spec, tmp_path):
    spec = load_spec(partly_infeasible_spec).with_overrides(search_overrides(
        {"searcher": "random", "num_samples": 50, "max_epochs": 3, "scheduler": "none", "max_concurrent": 1,
         "epoch_budget": 5}))
    run_dir = run_search(spec, tiny_ham, "epochs", tmp_path / "results")
    trials, epochs, info = read_trials(run_dir), read_epochs(run_dir), read_run_info(run_dir)
    # One trial at a time: 3 epochs, then 2 of the next one, which the budget cuts short.
    assert len(epochs) == 5 and info["epochs_spent"] == 5 and info["epoch_budget"] == 5
    assert info["status"] == "finished" and len(trials) == 2
    assert list(trials.sort_values("started_at")["status"]) == ["completed", "pruned"]
    # Random search redraws infeasible candidates too; the draws it rejected are recorded with their reason.
    assert (trials["hp_conv_blocks"] == 1).all()
    assert set(info["infeasible_draws"]["by_reason"]) <= {"pooling"}


def test_keras_tuner_stops_at_the_epoch_budget(tiny_ham, tiny_spec, tmp_path):
    spec = load_spec(tiny_spec).with_overrides(search_overrides({"engine": "keras-tuner", "keras_tuner": "random",
                                                                 "num_samples": 50, "max_epochs": 3,
                                                                 "epoch_budget": 4}))
    run_dir = run_search(spec, tiny_ham, "kt_budget", tmp_path / "results")
    trials, info = read_trials(run_dir), read_run_info(run_dir)
    # One trial at a time: 3 epochs, then 1 of the next, which the budget cuts short; no third trial starts.
    assert info["epochs_spent"] == len(read_epochs(run_dir)) == 4 and info["status"] == "finished"
    assert list(trials["epochs"]) == [3, 1]


def test_a_resumed_epoch_budget_counts_the_epochs_of_earlier_sittings(tiny_spec, tmp_path):
    from automl.objective import Objective
    from automl.store import RunStore

    run_dir = tmp_path / "run"
    store = RunStore(run_dir, Objective.of("val_balanced_accuracy"), max_epochs=3)
    for trial_id, epochs in (("a", 3), ("b", 2)):
        for epoch in range(1, epochs + 1):
            store.epoch(trial_id, epoch, {"val_balanced_accuracy": 0.5}, epoch, {})
    store.epoch("b", 2, {"val_balanced_accuracy": 0.6}, 2, {})  # retried: epoch 2 again, counted once
    store.close()
    settings = load_spec(tiny_spec).with_overrides(search_overrides({"epoch_budget": 7})).search
    budget = EpochBudget(settings, run_dir)
    assert not budget.stop_all()  # 5 of 7 spent in the earlier sitting
    assert not budget("b", {"epoch": 2})  # b's epoch 2 repeated after a restore from its checkpoint: not new
    assert not budget("b", {"epoch": 3})  # 6
    assert budget("c", {"epoch": 1}) and budget.stop_all()  # 7: spent


@pytest.mark.parametrize("kind", ["random", "optuna"])
def test_a_resumed_searcher_keeps_its_rejected_count(kind, partly_infeasible_spec, tmp_path):
    spec = load_spec(partly_infeasible_spec).with_overrides(search_overrides({"searcher": kind,
                                                                              "max_concurrent": 100}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = searcher(spec, (16, 16), run_dir)
    for i in range(12):
        first.suggest(f"t{i}")
    first.save(str(tmp_path / "searcher.pkl"))
    counted = first.searcher.rejections.to_record()
    assert counted["rejected"] >= 1 and read_run_info(run_dir)["infeasible_draws"] == counted
    # What Tune does on --resume: a new searcher from the spec, its state restored from the experiment snapshot.
    resumed = searcher(spec, (16, 16), run_dir)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.searcher.rejections.to_record() == counted
    config = resumed.suggest("t12")
    assert config["conv_blocks"] == 1
    assert resumed.searcher.rejections.count >= counted["rejected"]


def test_a_space_where_nothing_fits_is_one_clear_line_before_anything_runs(tiny_ham, tmp_path, capsys):
    spec = tmp_path / "nothing_fits.yaml"
    spec.write_text(TINY_SEARCH.replace("conv_blocks: {choice: [1, 2]}", "conv_blocks: {choice: [5, 6]}"))
    results = tmp_path / "results"
    assert main(["search", str(spec), "--data", str(tiny_ham), "--name", "nothing", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}: hyperparameters: {MAX_REDRAWS} draws in a row" in err and "16x16" in err
    assert not (results / "nothing" / "run.json").exists() and not (results / "nothing" / "spec.yaml").exists()


def test_optuna_searcher_keeps_rays_define_by_run_timing_warning_off_the_console(tiny_spec, monkeypatch):
    # Ray warns whenever the define-by-run space takes over 0.05 s, as TPE's sampling does past a few thousand trials.
    from ray.tune.search.optuna import optuna_search

    monkeypatch.setattr(optuna_search, "DEFINE_BY_RUN_WARN_THRESHOLD_S", -1.0)  # every call is "slow"
    found = searcher(load_spec(tiny_spec), (16, 16), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert found.suggest("t0") is not None
    assert not [w for w in caught if "Define-by-run" in str(w.message)]
