"""What a search prints: one line per finished trial (stderr) and the leaderboard at the end (stdout)."""

from __future__ import annotations

import pandas as pd

from automl.objective import Objective
from automl.search._report import Report
from automl.store import RunStore


def report(metric: str, mode: str, num_samples: int) -> Report:
    return Report(Objective.of(metric, mode), num_samples, searched=["conv_blocks", "learning_rate"])


def store(tmp_path, metric: str, mode: str, max_epochs: int) -> RunStore:
    return RunStore(tmp_path, Objective.of(metric, mode), max_epochs=max_epochs)


def record(runs: RunStore, trial_id: str, values: list[float], status: str, params: dict | None = None) -> None:
    """A trial as the search engines feed it to the store: started, an epoch per value, finished."""
    runs.trial_started(trial_id, params or {"conv_blocks": 2})
    for epoch, value in enumerate(values, start=1):
        runs.epoch(trial_id, epoch, {runs.objective.name: value}, elapsed_s=float(epoch), info={})
    runs.trial_finished(trial_id, status, error="too deep for 28x28" if status == "errored" else None)


def test_trial_line_shows_progress_status_value_and_best_so_far(tmp_path, capsys):
    runs = store(tmp_path, "val_balanced_accuracy", "max", max_epochs=3)
    lines = report("val_balanced_accuracy", "max", num_samples=4)
    record(runs, "t1", [0.30, 0.52, 0.41], "completed", {"conv_blocks": 3, "learning_rate": 0.00125})
    record(runs, "t2", [0.20], "completed")  # stopped after 1 of 3 epochs: the store calls it pruned
    runs.trial_started("t3", {"conv_blocks": 4})  # still running: not counted as done

    lines.trial_line(runs, "t1")
    lines.trial_line(runs, "t2")
    first, second = capsys.readouterr().err.splitlines()

    assert first.startswith("[2/4] t1 completed after 3 epochs")
    assert "val_balanced_accuracy 0.520" in first and "best so far 0.520" in first
    assert "(conv_blocks=3, learning_rate=0.00125)" in first
    assert second.startswith("[2/4] t2 pruned after 1 epochs")
    assert "val_balanced_accuracy 0.200" in second and "best so far 0.520" in second


def test_trial_line_shows_what_the_trial_cost_and_its_family(tmp_path, capsys):
    runs = store(tmp_path, "val_balanced_accuracy", "max", max_epochs=2)
    runs.trial_started("t1", {"family": "cnn", "conv_blocks": 3})
    for epoch in (1, 2):
        runs.epoch("t1", epoch, {"val_balanced_accuracy": 0.4, "parameters": 1_234_567, "epoch_s": 4.25}, 9.0, {})
    runs.trial_finished("t1", "completed")
    Report(Objective.of("val_balanced_accuracy"), 1, searched=["conv_blocks", "family"]).trial_line(runs, "t1")
    line = capsys.readouterr().err.strip()
    assert line.startswith("[1/1] t1 completed after 2 epochs, 1.23M params, 4.2 s/epoch  val_balanced_accuracy")
    assert line.endswith("(family=cnn, conv_blocks=3)")  # the family first


def test_trial_line_of_an_errored_trial_gives_the_reason_and_no_value(tmp_path, capsys):
    runs = store(tmp_path, "val_loss", "min", max_epochs=3)
    record(runs, "good", [0.9, 0.7, 0.8], "completed")
    record(runs, "bad", [], "errored")

    report("val_loss", "min", num_samples=2).trial_line(runs, "bad")
    line = capsys.readouterr().err.strip()

    assert line.startswith("[2/2] bad errored: too deep for 28x28")
    assert "val_loss -" in line and "best so far 0.700" in line  # min metric: the lowest loss is best


def trials_frame(metric: str, values: dict[str, float | None]) -> pd.DataFrame:
    return pd.DataFrame([
        {"trial_id": t, "status": "completed", "epochs": 3, f"best_{metric}": v, "best_val_macro_f1": 0.1,
         "hp_conv_blocks": i + 1}
        for i, (t, v) in enumerate(values.items())
    ])


def ranked_ids(output: str, trial_ids) -> list[str]:
    """The trial ids in the order the leaderboard's rows show them."""
    found = [(output.find(f" {t} "), t) for t in trial_ids if f" {t} " in output]
    return [t for _, t in sorted(found)]


def test_leaderboard_ranks_a_max_metric_best_first_and_shows_at_most_top_rows(capsys):
    values = {"ta": 0.41, "tb": 0.66, "tc": None, "td": 0.52, "te": 0.12}
    report("val_balanced_accuracy", "max", 5).leaderboard(trials_frame("val_balanced_accuracy", values), top=3)
    out = capsys.readouterr().out

    assert "leaderboard by best_val_balanced_accuracy (top 3 of 5 trials)" in out
    assert ranked_ids(out, values) == ["tb", "td", "ta"]
    assert "0.660" in out and "0.120" not in out


def test_leaderboard_ranks_a_min_metric_lowest_first_with_unscored_trials_last(capsys):
    values = {"ta": 0.9, "tb": None, "tc": 0.4, "td": 1.3}
    report("val_loss", "min", 4).leaderboard(trials_frame("val_loss", values))
    out = capsys.readouterr().out

    assert "top 4 of 4 trials" in out
    assert ranked_ids(out, values) == ["tc", "ta", "td", "tb"]


def test_leaderboard_shows_family_parameters_and_seconds_per_epoch_when_recorded(capsys):
    trials = trials_frame("val_balanced_accuracy", {"ta": 0.5, "tb": 0.7, "tc": 0.6}).assign(
        hp_family=["cnn", "resnet", "backbone"], parameters=[950.0, 1_234_567.0, None],
        seconds_per_epoch=[0.42, 12.34, None])
    report("val_balanced_accuracy", "max", 3).leaderboard(trials)
    header, rows = table_lines(capsys.readouterr().out)
    assert header[:7] == ["trial", "status", "family", "epochs", "params", "s/epoch", "balanced_accuracy"]
    assert "family" not in header[7:]  # not again among the hyperparameters
    assert rows[0][:6] == ["tb", "completed", "resnet", "3", "1.23M", "12.3"]
    assert rows[1][:6] == ["tc", "completed", "backbone", "3", "-", "-"]  # e.g. a trial that reported no epoch yet
    assert rows[2][:6] == ["ta", "completed", "cnn", "3", "950", "0.42"]


def test_leaderboard_of_a_run_recorded_before_costs_and_families_has_neither_column(capsys):
    report("val_balanced_accuracy", "max", 2).leaderboard(trials_frame("val_balanced_accuracy", {"ta": 0.5, "tb": 0.7}))
    header, rows = table_lines(capsys.readouterr().out)
    assert header[:4] == ["trial", "status", "epochs", "balanced_accuracy"] and rows[0][0] == "tb"
    assert not {"family", "params", "s/epoch"} & set(header)


def table_lines(output: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a printed table, cell by cell."""
    lines = [[cell.strip() for cell in line.strip("┃│ ").replace("┃", "│").split("│")]
             for line in output.splitlines() if "│" in line or "┃" in line]
    return lines[0], lines[1:]


def test_leaderboard_of_an_empty_run_says_so(capsys):
    report("val_balanced_accuracy", "max", 8).leaderboard(pd.DataFrame())
    assert capsys.readouterr().out.strip() == "no trial finished an epoch"


def test_beyond_its_line_limit_a_search_prints_new_bests_and_periodic_summaries(tmp_path, capsys):
    runs = store(tmp_path, "val_balanced_accuracy", "max", max_epochs=1)
    lines = Report(Objective.of("val_balanced_accuracy"), 6, ["conv_blocks"], lines_up_to=2, summary_every_s=0.0)
    runs.trial_started("t6", {"conv_blocks": 2})  # still running at the end
    for trial_id, value in (("t1", 0.3), ("t2", 0.2), ("t3", 0.1), ("t4", 0.6), ("t5", 0.5)):
        record(runs, trial_id, [value], "completed")
        lines.trial_line(runs, trial_id)
    out = capsys.readouterr().err.splitlines()
    trial_lines = [line for line in out if " completed after " in line]
    assert [line.split()[1] for line in trial_lines] == ["t1", "t2", "t4"]  # the first two, then new bests only
    assert "(new best)" in trial_lines[-1]
    assert any("more than 2 trials finished" in line for line in out)
    summaries = [line for line in out if "trials/min" in line]
    assert len(summaries) == 3 and summaries[-1].startswith("[5/6] 5 completed, 0 pruned, 0 errored, 1 running")
    assert "best so far 0.600" in summaries[-1]
