"""The whole pipeline on tiny data: automl run, then predict with the exported model."""

import json

import numpy as np
import pandas as pd
import pytest

from automl.cli import main
from automl.data import DX_CLASSES
from automl.layout import RunLayout
from automl.retrain import read_members
from tests.test_search import TINY_SEARCH


def test_run_then_predict(tiny_ham, tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SEARCH + "training: {epochs: 4, early_stopping_patience: 2}\n")
    results = tmp_path / "results"
    # --metric val_auc: one objective for the search, the retrain, the ensemble and the report. The search trains at
    # 12 px, every later stage at the spec's 16 px.
    code = main(["run", str(spec), "--data", str(tiny_ham), "--name", "e2e", "--results", str(results),
                 "--top-k", "2", "--seeds", "2", "--metric", "val_auc", "--decision", "prior",
                 "--search-image-size", "12"])
    assert code == 0, capsys.readouterr().err
    run_dir = results / "e2e"

    members = read_members(run_dir)
    assert len(members) == 4 and (members["epochs"] <= 4).all()
    assert set(RunLayout(run_dir).read_trials()["image_size"]) == {"12x12"} and set(members["image_size"]) == {"16x16"}
    assert {"val_balanced_accuracy", "test_balanced_accuracy", "trial_id", "seed"} <= set(members.columns)
    run = RunLayout(run_dir)
    for member in members.to_dict("records"):  # every TTA mode stored; what each member learnt from recorded
        assert all(run.member_probs(run.member(member["member_id"]), split, mode).is_file()
                   for split in ("val", "test") for mode in ("none", "flips", "dihedral"))
        assert sum(member["class_mix"]) == pytest.approx(1) and sum(member["class_prior"]) == pytest.approx(1)
    summary = json.loads((run_dir / "ensemble" / "ensemble.json").read_text())
    assert abs(sum(summary["weights"].values()) - 1) < 1e-9 and summary["method"] == "greedy"
    metrics = json.loads((run_dir / "ensemble" / "metrics.json").read_text())
    assert summary["objective"] == {"metric": "val_auc", "mode": "max"}
    assert metrics["ensemble"]["val"]["auc"] >= metrics[summary["best_member"]]["val"]["auc"]
    assert len(metrics["ensemble"]["test_ci95"]["balanced_accuracy"]) == 2
    assert summary["tta"] in ("none", "flips", "dihedral") and set(summary["tta_scores"]) == {"none", "flips",
                                                                                              "dihedral"}
    assert summary["decision"] == "prior" and summary["temperature"] > 0
    assert set(metrics["ensemble"]["calibration"]["test"]["after"]) == {"ece", "brier", "loss"}
    report = (run_dir / "ensemble" / "report.md").read_text()
    assert "MedMNIST v2" in report and "(best member on val)" in report and "val_auc (max)" in report
    # Provenance: the exact command, the machine and each stage's wall time.
    assert f"command: `automl run {spec}" in report and "- machine: " in report
    assert "- search: " in report and "- retrain: top 2 x 2 seed(s) = 4 members" in report
    assert (run_dir / "ensemble" / "confusion_matrix.png").stat().st_size > 1000

    model_dir = run_dir / "model"
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["classes"] == list(DX_CLASSES) and "not for diagnosis" in card["intended_use"]
    assert (card["tta"], card["decision"], card["temperature"]) == (summary["tta"], "prior", summary["temperature"])
    assert card["trained_on"] == "train" and "test_after_temperature" in card["calibration"]
    assert (card["image_size"], card["search_image_size"]) == ([16, 16], [12, 12])
    assert "members at 16x16 pixels (searched at 12x12)" in report
    # The shipped graph's size: each member's, as retrain recorded it, and the sum.
    sizes = members.set_index("member_id")["parameters"]
    assert all(m["parameters"] == sizes[m["member_id"]] > 0 for m in card["members"])
    assert card["parameters"] == sum(m["parameters"] for m in card["members"])
    assert f"- **parameters**: {card['parameters']:,}" in (model_dir / "model_card.md").read_text()
    assert "CC BY-NC 4.0" in card["training_data"]  # the training data's terms travel with the model
    images = tiny_ham / "HAM10000_images"
    assert main(["predict", str(model_dir), str(images), "--out", str(tmp_path / "preds.csv")]) == 0
    preds = pd.read_csv(tmp_path / "preds.csv", keep_default_na=False)
    assert len(preds) == len(list(images.glob("*.jpg"))) and (preds["error"] == "").all()
    probs = preds[[f"p_{c}" for c in DX_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    # --resume on a finished search skips it and redoes the later stages.
    trials_before = (run_dir / "trials.parquet").stat().st_mtime_ns
    code = main(["run", str(spec), "--data", str(tiny_ham), "--name", "e2e", "--results", str(results), "--resume",
                 "--top-k", "1"])
    assert code == 0 and "already finished" in capsys.readouterr().out
    assert (run_dir / "trials.parquet").stat().st_mtime_ns == trials_before and len(read_members(run_dir)) == 1

    # Refit the (now one-member) ensemble on train+val for its best epoch count; export it with the same choices.
    assert main(["retrain", "e2e", "--results", str(results), "--refit", "--top-k", "1"]) == 2
    assert "--refit retrains the ensemble's members" in capsys.readouterr().err
    assert main(["retrain", "e2e", "--results", str(results), "--refit"]) == 0, capsys.readouterr().err
    member, refit = read_members(run_dir).iloc[0], run.read_members(refit=True).iloc[0]
    assert refit["member_id"] == member["member_id"] and refit["epochs"] == member["best_epoch"]
    assert refit["class_prior"][5] > member["class_prior"][5] - 0.1  # train+val: nearly the same prior
    assert not run.member_probs(run.member(member["member_id"], refit=True), "val").exists()  # val was training data
    metrics, summary = run.read_ensemble_metrics(), run.read_ensemble()
    assert metrics["refit_ensemble"]["members"] == [member["member_id"]] and summary["refit"]
    assert "## Refit on train+val" in run.report.read_text()
    refit_dir = tmp_path / "refit_model"
    assert main(["export", "e2e", "--results", str(results), "--out", str(refit_dir), "--refit"]) == 0
    card = json.loads((refit_dir / "model_card.json").read_text())
    assert card["trained_on"].startswith("train+val") and card["members"][0]["epochs"] == member["best_epoch"]
    assert card["metrics"]["test_accuracy"] == metrics["refit_ensemble"]["test"]["accuracy"]
    assert main(["predict", str(refit_dir), str(images), "--out", str(tmp_path / "refit.csv")]) == 0
    # Without --out, export writes where automl run puts the model: RESULTS/NAME/model.
    (model_dir / "model.keras").unlink()
    assert main(["export", "e2e", "--results", str(results)]) == 0
    assert f"exported {model_dir.resolve()}" in capsys.readouterr().out and (model_dir / "model.keras").is_file()


def test_a_metric_to_minimise_is_minimised_by_every_stage(tiny_ham, tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SEARCH + "training: {epochs: 3, early_stopping_patience: 1}\n")
    results, run_dir = tmp_path / "results", tmp_path / "results" / "loss"
    code = main(["run", str(spec), "--data", str(tiny_ham), "--name", "loss", "--results", str(results),
                 "--top-k", "2", "--metric", "val_loss", "--num-samples", "2", "--max-epochs", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    run = RunLayout(run_dir)
    assert (run.read_info()["metric"], run.read_info()["mode"]) == ("val_loss", "min")
    # Search: each trial's best epoch is the one with the lowest val_loss.
    epochs = run.read_epochs()
    for trial in run.read_trials().to_dict("records"):
        mine = epochs[epochs["trial_id"] == trial["trial_id"]]
        assert trial["best_val_loss"] == mine["val_loss"].min()
    # Retrain: early stopping kept the epoch of the lowest val_loss.
    for member in read_members(run_dir).to_dict("records"):
        history = pd.read_csv(run.member_history(run.member(member["member_id"])))
        assert member["best_epoch"] == history.loc[history["val_loss"].idxmin(), "epoch"]
    assert "early stopping patience 1 on val_loss (min)" in err
    assert "member m01 epoch   1/3" in err and "best val_loss" in err  # retrain shows every member epoch
    # Ensemble: greedy selection lowered val_loss at every pick, the best member has the lowest val_loss.
    summary, metrics = run.read_ensemble(), run.read_ensemble_metrics()
    assert summary["objective"] == {"metric": "val_loss", "mode": "min"}
    assert summary["greedy_scores"] == sorted(summary["greedy_scores"], reverse=True)
    members = [m for m in metrics if m != "ensemble"]
    assert summary["best_member"] == min(members, key=lambda m: metrics[m]["val"]["loss"])
    assert metrics["ensemble"]["val"]["loss"] <= metrics[summary["best_member"]]["val"]["loss"] + 1e-12
    assert "selected by val_loss (min)" in run.report.read_text()
