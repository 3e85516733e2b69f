"""Warm starts (automl.search._warm): results told without training when they compare, configurations trained again
when they do not, the portfolio trained first; real tiny searches on embedded local Ray."""

import dataclasses

import optuna
import pytest
import yaml

from automl.cli import main
from automl.data import load_dataset
from automl.layout import RunLayout, hyperparameter_columns, hyperparameter_name
from automl.search import run_search
from automl.search._searchers import WARM_START, searcher
from automl.objective import Objective
from automl.search._warm import find_portfolio, plan_warm_start, read_portfolio, read_sources
from automl.spec import load_spec, search_overrides, shipped_specs_dir
from automl.trial import EPOCH_DEFINITION
from tests.conftest import make_ham
from tests.test_search import TINY_SEARCH

#: Two one-epoch trials at once, no pruning: the smallest search that has results to start from.
SMALL = {"num_samples": 2, "max_epochs": 1, "scheduler": "none", "max_concurrent": 2}
SPECS = shipped_specs_dir()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny Optuna search (two trials of one epoch): what the warm starts below start from."""
    root = tmp_path_factory.mktemp("warm")
    spec_file = root / "tiny_search.yaml"
    spec_file.write_text(TINY_SEARCH)
    ham = make_ham(root / "ham")
    spec = load_spec(spec_file).with_overrides(search_overrides(SMALL))
    run_dir = run_search(spec, ham, "source", root / "results", cache_dir=root / "cache")
    trials = RunLayout(run_dir).read_trials()
    assert len(trials) == 2 and trials["best_val_balanced_accuracy"].notna().all()
    return {"root": root, "spec_file": spec_file, "ham": ham, "run": run_dir, "trials": trials}


def configurations(trials) -> list[dict]:
    """Each trial's hyperparameters as recorded (without the ones its conditions left out), as Python values."""
    return [{hyperparameter_name(c): getattr(v, "item", lambda v=v: v)() for c, v in row.items()
             if v == v and v is not None} for row in trials[hyperparameter_columns(trials)].to_dict("records")]


def same(a: list[dict], b: list[dict]) -> bool:
    """The same configurations, in any order."""
    return {frozenset(c.items()) for c in a} == {frozenset(c.items()) for c in b} and len(a) == len(b)


def searched(configuration: dict) -> dict:
    """What Optuna draws of a configuration of the tiny space: its fixed values left out."""
    return {k: v for k, v in configuration.items() if k not in ("dense_units", "batch_size")}


def test_a_comparable_run_is_told_without_training_and_the_portfolio_is_trained_first(source, tmp_path, capsys):
    results = source["run"].parent
    first = {"conv_blocks": 2, "base_filters": 4, "block_dropout_2": 0.1, "dense_units": 16, "learning_rate": 0.005,
             "batch_size": 32, "imbalance": "class_weight", "batch_norm": False}
    portfolio = tmp_path / "portfolio.yaml"
    # The second and third are not configurations of the space (a value outside it; a hyperparameter it lacks).
    portfolio.write_text(yaml.safe_dump({"configurations": [first, first | {"conv_blocks": 7}, first | {"zoom": 0.1}]}))
    args = ["search", str(source["spec_file"]), "--data", str(source["ham"]), "--name", "told", "--results",
            str(results), "--num-samples", "2", "--max-epochs", "1", "--scheduler", "none",
            "--warm-start", "source", "--portfolio", str(portfolio)]
    assert main(args) == 0
    run = RunLayout(results / "told")
    info = run.read_info()
    warm = info["warm_start"]
    assert (warm["told"], warm["enqueued"], warm["skipped_by_reason"]) == (2, 1, {"outside_space": 2})
    assert warm["runs"][0]["differs"] == [] and info["epoch_definition"] == EPOCH_DEFINITION
    err = capsys.readouterr().err
    assert ("warm start: 2 results told to Optuna without training (source: 2); 1 configuration to train first "
            "(portfolio portfolio.yaml: 1); 2 skipped (outside_space 2)") in err

    study = optuna.load_study(study_name="told", storage=f"sqlite:///{run.optuna_db}")
    told = [t for t in study.trials if t.user_attrs.get(WARM_START, "").startswith("source/")]
    # The source's results are in the study as completed trials, each with the best value the source recorded...
    recorded = {row["trial_id"]: row["best_val_balanced_accuracy"] for row in source["trials"].to_dict("records")}
    assert sorted(t.user_attrs[WARM_START].split("/")[1] for t in told) == sorted(recorded)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in told)
    assert all(t.value == pytest.approx(recorded[t.user_attrs[WARM_START].split("/")[1]]) for t in told)
    assert same([t.params for t in told], [searched(c) for c in configurations(source["trials"])])
    # ... and were not trained here: the store holds the two trials that ran, and only their epochs.
    trials, epochs = run.read_trials(), run.read_epochs()
    assert len(trials) == 2 and len(epochs) == 2 and info["epochs_spent"] == 2 and len(study.trials) == 4
    assert not set(trials["trial_id"]) & set(recorded)
    # The portfolio's configuration was the first draw, and trained.
    assert first in configurations(trials)
    [enqueued] = [t for t in study.trials if t.user_attrs.get(WARM_START, "").startswith("portfolio")]
    assert enqueued.state == optuna.trial.TrialState.COMPLETE and enqueued.params == searched(first)

    # A resumed search tells and enqueues nothing again.
    assert main([*args, "--resume"]) == 0
    study = optuna.load_study(study_name="told", storage=f"sqlite:///{run.optuna_db}")
    assert len(study.trials) == 4 and run.read_info()["warm_start"] == warm and len(run.read_trials()) == 2


def test_an_incomparable_run_is_trained_again(source, tmp_path):
    other = make_ham(tmp_path / "other", seed=1)  # other images: another data fingerprint
    spec = load_spec(source["spec_file"]).with_overrides(search_overrides(SMALL | {"warm_start": [str(source["run"])]}))
    run = RunLayout(run_search(spec, other, "retrained", tmp_path / "results"))
    warm = run.read_info()["warm_start"]
    assert (warm["told"], warm["enqueued"]) == (0, 2) and "data_fingerprint" in warm["runs"][0]["differs"]
    # Both configurations ran again, here, on this data: nothing was told.
    trials = run.read_trials()
    assert same(configurations(trials), configurations(source["trials"]))
    study = optuna.load_study(study_name="retrained", storage=f"sqlite:///{run.optuna_db}")
    assert len(study.trials) == 2 and all(t.user_attrs[WARM_START].startswith("source/") for t in study.trials)


def test_a_split_is_compared_by_its_images_not_its_description(source, tmp_path):
    spec = load_spec(source["spec_file"]).with_overrides(search_overrides(SMALL | {"warm_start": [str(source["run"])]}))
    dataset = load_dataset(source["ham"], **spec.data.dataset_args(), cache_dir=source["root"] / "cache")
    assert RunLayout(source["run"]).read_info()["split_fingerprint"] == dataset.split_fingerprint
    assert plan_warm_start(spec, read_sources(spec, tmp_path), dataset).record["told"] == 2
    # The same description, one image moved from train to val (a split file edited since, or another version of the
    # split's code): the source's results are not this split's, so its configurations train again.
    table = dataset.table.copy()
    table.loc[table.index[table["split"] == "train"][0], "split"] = "val"
    moved = dataclasses.replace(dataset, table=table)
    assert moved.split_protocol == dataset.split_protocol and moved.split_fingerprint != dataset.split_fingerprint
    warm = plan_warm_start(spec, read_sources(spec, tmp_path), moved).record
    assert (warm["told"], warm["enqueued"], warm["runs"][0]["differs"]) == (0, 2, ["split_fingerprint"])


def test_duplicates_and_the_limit_are_skipped_and_random_search_draws_the_rest_first(source, tmp_path):
    run = str(source["run"])
    base = load_spec(source["spec_file"])
    dataset = load_dataset(source["ham"], **base.data.dataset_args())
    # Random search learns nothing from results: a comparable run's configurations are trained first too.
    spec = base.with_overrides(search_overrides(
        SMALL | {"searcher": "random", "warm_start": [run, run], "tpe_startup_trials": 3, "max_concurrent": 100}))
    warm = plan_warm_start(spec, read_sources(spec, tmp_path), dataset)
    assert (warm.record["told"], warm.record["enqueued"], warm.record["skipped_by_reason"]) == (0, 2, {"duplicate": 2})
    best_first = configurations(Objective().sort(source["trials"], "best_val_balanced_accuracy"))
    assert [c for c, _ in warm.enqueued] == best_first
    limited = spec.with_overrides(search_overrides({"tpe_startup_trials": 1}))
    assert plan_warm_start(limited, read_sources(limited, tmp_path), dataset).record["skipped_by_reason"] == {
        "beyond_limit": 3}

    drawn = searcher(spec, (16, 16), None, warm)
    assert spec.space.active(drawn.suggest("t0")) == best_first[0]
    drawn.save(str(tmp_path / "searcher.pkl"))
    assert spec.space.active(drawn.suggest("t1")) == best_first[1]
    assert spec.space.active(drawn.suggest("t2")) not in best_first  # then random draws
    # A resumed search (its searcher restored from Tune's snapshot) gives what it had not given yet, once.
    resumed = searcher(spec, (16, 16), None)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert spec.space.active(resumed.suggest("t1")) == best_first[1] and resumed.searcher.first == []


def test_the_shipped_portfolio_fits_its_space():
    spec = load_spec(SPECS / "ham10000_cnn.yaml")
    configurations = read_portfolio(find_portfolio(spec.search.portfolio, spec.source))
    assert len(configurations) == 5
    fitted = [spec.space.configuration(c) for c in configurations]
    assert all(spec.space.infeasible(c, spec.data.image_size) is None for c in fitted)
    assert len({(c["conv_blocks"], c["convs_per_block"], c["imbalance"]) for c in fitted}) == 5  # diverse


@pytest.mark.parametrize("case", ["not a run", "missing portfolio", "bad portfolio"])
def test_bad_warm_start_input_is_one_line_before_anything_is_written(case, tiny_ham, tmp_path, capsys):
    spec = tmp_path / "tiny_search.yaml"
    spec.write_text(TINY_SEARCH)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text("configurations: {conv_blocks: 1}\n")
    empty = tmp_path / "empty"
    flags, message = {
        "not a run": (["--warm-start", str(empty)], f"--warm-start {empty}: not a search run"),
        "missing portfolio": (["--portfolio", "nowhere.yaml"], "search.portfolio: nowhere.yaml not found"),
        "bad portfolio": (["--portfolio", str(tmp_path / "bad.yaml")], f"{tmp_path / 'bad.yaml'}: a portfolio is"),
    }[case]
    results = tmp_path / "results"
    assert main(["search", str(spec), "--data", str(tiny_ham), "--name", "x", "--results", str(results), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (results / "x" / "run.json").exists() and not (results / "x" / "spec.yaml").exists()
