"""``automl evaluate``: an exported model measured on labelled folders (labels.csv and HAM10000 layouts), labels outside
the model's classes, unreadable images, bad input as one line, the metrics worked out by hand, and the dashboard."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from automl.data import DX_CLASSES
from automl.evaluate import evaluate_model
from automl.cli import main
from automl.files import MARKER, write_json
from automl.layout import ModelLayout, RunLayout
from automl.metrics import bootstrap_intervals, expected_calibration_error, sensitivity_at_specificity
from automl.store import write_run_info
from tests.conftest import export_tiny_model, make_ham

ROUNDS = 40  # bootstrap rounds in these tests (the command's default is 1000)
# label -> readable images; one more nv image is corrupt, one scc (a label evaluate does not know) is unscored.
LABELS = {"mel": 4, "nv": 4, "bkl": 2, "benign_nos": 3, "scc": 1}


def make_labelled(root, labels_name="labels.csv"):
    """An ISIC-archive-like folder: images/ plus a labels CSV with extra columns, a corrupt image, a labelled id
    without an image, and an image without a label."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for dx, count in LABELS.items():
        for _ in range(count):
            image_id = f"ISIC_{len(rows):07d}"
            size = (20, 24) if len(rows) % 2 else (30, 30)  # two sizes: batches are grouped by shape
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{image_id}.jpg")
            rows.append({"image_id": image_id, "dx": dx.upper() if dx == "mel" else dx, "license": "CC-0",
                         "source": "ISIC Archive, via test"})
    (root / "images" / "ISIC_corrupt.jpg").write_bytes(b"not a jpeg")
    rows.append({"image_id": "ISIC_corrupt", "dx": "nv", "license": "CC-0", "source": "x"})
    rows.append({"image_id": "ISIC_missing", "dx": "mel", "license": "CC-0", "source": "x"})
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "images" / "ISIC_unlabelled.png")
    pd.DataFrame(rows).to_csv(root / labels_name, index=False)
    return root


@pytest.fixture
def labelled(tmp_path):
    return make_labelled(tmp_path / "isic_like")


# --- the metrics, by hand -----------------------------------------------------------------------------------------

def test_ece_by_hand():
    # 15 bins of width 1/15: 0.9 falls in bin 13, 0.1 in bin 1, 0.6 in bin 9.
    hits = np.array([1, 1, 1, 0, 0, 1])
    confidence = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1])
    # bin 13: 3 of 4 right at 0.9 -> |0.75 - 0.9| = 0.15; bin 1: 1 of 2 at 0.1 -> |0.5 - 0.1| = 0.4
    assert expected_calibration_error(hits, confidence) == pytest.approx((4 * 0.15 + 2 * 0.4) / 6)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.0)
    # top-label form: probabilities [.9 .1] with label 0 (right at .9), [.6 .4] with label 1 (wrong at .6)
    probs, y = np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1])
    assert expected_calibration_error(probs.argmax(1) == y, probs.max(1)) == pytest.approx((0.1 + 0.6) / 2)
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_sensitivity_at_specificity_by_hand():
    negatives, positives = np.arange(1, 11) / 10, np.array([0.3, 0.75, 0.85, 0.95])
    y = np.r_[np.zeros(10), np.ones(4)]
    score = np.r_[negatives, positives]
    # Specificity 0.8: 8 of the 10 negatives at or below 0.8, so the threshold is 0.8; 0.85 and 0.95 are above it.
    assert sensitivity_at_specificity(y, score, 0.8) == pytest.approx(
        {"sensitivity": 0.5, "threshold": 0.8, "specificity": 0.8})
    assert sensitivity_at_specificity(y, score, 0.9) == pytest.approx(
        {"sensitivity": 0.25, "threshold": 0.9, "specificity": 0.9})
    # Ties: four negatives at 0.2 already give specificity 0.8 when 0.7 is asked; a positive at 0.2 is not above it.
    tied = sensitivity_at_specificity(np.array([0, 0, 0, 0, 0, 1, 1]), np.array([.2, .2, .2, .2, .5, .2, .6]), 0.7)
    assert tied == pytest.approx({"sensitivity": 0.5, "threshold": 0.2, "specificity": 0.8})
    assert math.isnan(sensitivity_at_specificity(np.zeros(3), np.ones(3) / 2, 0.8)["sensitivity"])


def test_bootstrap_intervals_are_seeded_and_skip_undefined_values():
    values = np.arange(100.0)
    mean = bootstrap_intervals(100, lambda rows: {"mean": values[rows].mean(), "never": math.nan}, rounds=50, seed=3)
    assert mean == bootstrap_intervals(100, lambda rows: {"mean": values[rows].mean(), "never": math.nan}, 50, 3)
    assert 40 < mean["mean"][0] < 49.5 < mean["mean"][1] < 59 and all(math.isnan(v) for v in mean["never"])


# --- the command --------------------------------------------------------------------------------------------------

def test_labels_csv_with_other_labels_and_a_corrupt_image(exported, labelled, capsys):
    _, model_dir = exported
    (labelled / "images" / "README.txt").write_text("not an image")
    results = evaluate_model(model_dir, labelled, rounds=ROUNDS)
    assert "skipped 1 file(s): README.txt (.txt is not an image format Pillow reads)" in capsys.readouterr().err
    out = ModelLayout(model_dir).evaluation("isic_like")
    for path in (out.metrics, out.report, out.roc_png, out.reliability_png, out.predictions, out.root / MARKER):
        assert path.is_file(), path
    assert json.loads(out.metrics.read_text())["name"] == results["name"] == "isic_like"
    assert results["images"] == {"labelled": 16, "found": 15, "missing": 1, "missing_first": ["ISIC_missing"],
                                 "unlabelled_files": 1, "skipped_files": 1,
                                 "skipped_first": [str(labelled / "images" / "README.txt")], "unreadable": 1,
                                 "scored": 14}
    labels = results["labels"]
    assert labels["nv"] == {"images": 5, "unreadable": 1, "scored": 4, "multiclass": "nv",
                            "melanoma_vs_rest": "rest", "malignant_vs_benign": "benign"}
    assert labels["mel"]["melanoma_vs_rest"] == "melanoma" and labels["mel"]["malignant_vs_benign"] == "malignant"
    assert labels["benign_nos"] == {"images": 3, "unreadable": 0, "scored": 3, "multiclass": None,
                                    "melanoma_vs_rest": "rest", "malignant_vs_benign": "benign"}
    assert labels["scc"] == {"images": 1, "unreadable": 0, "scored": 1, "multiclass": None,
                             "melanoma_vs_rest": None, "malignant_vs_benign": None}
    multiclass = results["multiclass"]
    assert multiclass["images"] == 10 and multiclass["classes_scored"] == ["bkl", "mel", "nv"]
    assert set(multiclass["per_class"]) == {"bkl", "mel", "nv"}
    for question in ("melanoma", "malignant"):
        assert (results[question]["positives"], results[question]["negatives"]) == (4, 9)
        assert results[question]["negative_labels"] == ["bkl", "nv", "benign_nos"]
    assert results["melanoma"]["score"] == "p_mel" and results["malignant"]["score"] == "p_akiec + p_bcc + p_mel"

    # The AUCs are those of the written probabilities, on the scored rows.
    predictions = pd.read_csv(out.predictions, keep_default_na=False)
    assert len(predictions) == 15 and predictions["path"].str.startswith("images/").all()
    corrupt = predictions.set_index("image_id").loc["ISIC_corrupt"]
    assert corrupt["dx"] == "nv" and corrupt["error"] == "not an image PIL can read" and corrupt["dx_pred"] == ""
    scored = predictions[(predictions["error"] == "") & (predictions["dx"] != "scc")]
    malignant = scored[["p_akiec", "p_bcc", "p_mel"]].astype(float).sum(axis=1)
    assert results["melanoma"]["auc"] == pytest.approx(roc_auc_score(scored["dx"] == "mel", scored["p_mel"]), abs=1e-5)
    assert results["malignant"]["auc"] == pytest.approx(roc_auc_score(scored["dx"] == "mel", malignant), abs=1e-5)
    low, high = results["malignant"]["ci95"]["auc"]
    assert 0 <= low <= high <= 1
    assert set(results["malignant"]["operating_points"]) == {"0.8", "0.9"}

    matrix = results["confusion_matrix"]
    assert matrix["rows"] == ["bkl", "mel", "nv", "benign_nos", "scc"] and len(matrix["columns"]) == 7
    assert [sum(row) for row in matrix["counts"]] == [2, 4, 4, 3, 1]
    assert sum(results["predicted_share"].values()) == pytest.approx(1.0)

    report = out.report.read_text()
    for part in ("never chooses anything", "benign_nos", "Unknown labels (scc) enter no metric", "quantile",
                 "ISIC_missing", "| share predicted |", "1 unreadable"):
        assert part in report, part
    assert "## Images per label" in report

    # The model card now says how the model held up there.
    card = ModelLayout(model_dir).read_card()
    [entry] = card["external_evaluations"]
    assert entry["name"] == "isic_like" and entry["scored"] == 14
    assert entry["malignant_auc"]["value"] == pytest.approx(results["malignant"]["auc"])
    assert entry["malignant_auc"]["ci95"] == [low, high]
    assert f"| isic_like | 14 | {results['melanoma']['auc']:.3f} [" in ModelLayout(model_dir).card_md.read_text()


def test_ham10000_layout_through_the_command_line(exported, tmp_path, monkeypatch, capsys):
    _, model_dir = exported
    ham = make_ham(tmp_path / "ham", lesions_per_class=1, size=16)
    monkeypatch.setitem(evaluate_model.__kwdefaults__, "rounds", ROUNDS)
    out = tmp_path / "eval"
    assert main(["evaluate", str(model_dir), "--data", str(ham), "--out", str(out), "--name", "sample"]) == 0
    assert "melanoma vs rest AUC" in capsys.readouterr().err
    results = json.loads((out / "metrics.json").read_text())
    assert results["name"] == "sample" and not ModelLayout(model_dir).evaluations.exists()
    assert "external_evaluations" not in ModelLayout(model_dir).read_card()  # kept elsewhere: the card is untouched
    metadata = pd.read_csv(ham / "HAM10000_metadata.csv")
    assert results["images"]["scored"] == results["multiclass"]["images"] == len(metadata)
    assert results["multiclass"]["classes_scored"] == sorted(set(metadata["dx"]))
    assert results["malignant"]["positive_labels"] == ["akiec", "bcc", "mel"]
    assert "these are HAM10000 images" in (out / "report.md").read_text()
    # Run again: the folder is ours, so it is replaced as a whole.
    assert main(["evaluate", str(model_dir), "--data", str(ham), "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["name"] == "ham"


def test_binary_model_scores_both_questions_with_p_malignant(tmp_path, labelled):
    _, model_dir = export_tiny_model(tmp_path / "binary", ("benign", "malignant"))
    results = evaluate_model(model_dir, labelled, labels=labelled / "labels.csv", name="archive", rounds=ROUNDS)
    assert results["melanoma"]["score"].startswith("p_malignant (the model has no melanoma output)")
    assert results["melanoma"]["auc"] == results["malignant"]["auc"]  # every malignant image here is a melanoma
    # A benign-vs-malignant model scores every known label as its side, benign_nos included; scc stays out.
    assert results["multiclass"]["images"] == 13 and results["labels"]["benign_nos"]["multiclass"] == "benign"
    predictions = pd.read_csv(ModelLayout(model_dir).evaluation("archive").predictions)
    assert "p_malignant" in predictions and "p_benign" not in predictions
    assert "has no melanoma output" in ModelLayout(model_dir).evaluation("archive").report.read_text()


def refused(argv, capsys, match):
    """The command exits 2 with one line naming the problem (after any progress lines), and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("automl evaluate: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err and match in errors[0], err


def test_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, labelled, capsys):
    _, model_dir = exported
    command = ["evaluate", str(model_dir), "--data"]
    images_only = tmp_path / "images_only"
    images_only.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(images_only / "ISIC_1.jpg")
    refused([*command, str(images_only)], capsys, "no labels file: expected labels.csv or HAM10000_metadata.csv")
    refused([*command, str(labelled), "--labels", str(tmp_path / "nope.csv")], capsys,
            "nope.csv: labels file not found")

    (images_only / "labels.csv").write_text("image_id,diagnosis\nISIC_1,nv\n")
    refused([*command, str(images_only)], capsys, "labels.csv: missing column dx (found: image_id, diagnosis")
    (images_only / "labels.csv").write_text("image_id,dx\nISIC_9,nv\nISIC_8,mel\n")
    refused([*command, str(images_only)], capsys, "none of its 2 image_ids has an image file below")
    (images_only / "HAM10000_metadata.csv").write_text("image_id,dx\nISIC_1,nv\n")
    refused([*command, str(images_only)], capsys, "holds both labels.csv and HAM10000_metadata.csv")

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "ISIC_1.jpg").write_bytes(b"junk")
    (unreadable / "labels.csv").write_text("image_id,dx\nISIC_1,nv\n")
    refused([*command, str(unreadable)], capsys, "none of the 1 labelled images could be read (first: ISIC_1.jpg")

    refused([*command, str(labelled), "--name", "a/b"], capsys, "--name 'a/b': give a plain folder name")
    refused(["evaluate", str(tmp_path / "not_a_model"), "--data", str(labelled)], capsys,
            "not an exported model folder (no model.keras)")
    assert not ModelLayout(model_dir).evaluations.exists()


# --- the dashboard ------------------------------------------------------------------------------------------------

def test_dashboard_lists_the_models_evaluations_and_serves_only_their_reports(tmp_path, labelled):
    from automl.dashboard import create_app
    from automl.metrics import classification_metrics

    results_dir = tmp_path / "results"
    run = RunLayout(results_dir / "run1")
    write_run_info(run.root, name="run1", status="finished", task="multiclass", metric="val_balanced_accuracy")
    y, probs = np.array([0, 1, 2]), np.eye(7)[[0, 1, 2]] * 0.9 + 0.1 / 7
    write_json(run.ensemble_metrics, {"ensemble": {"test": classification_metrics(y, probs, DX_CLASSES)}})
    export_tiny_model(run.model.root)
    client = create_app(results_dir).server.test_client()
    assert "None yet: automl evaluate" in _models_page(client)

    evaluate_model(run.model.root, labelled, rounds=ROUNDS)
    page = _models_page(client)
    assert '"id":"evaluations"' in page and "isic_like" in page and "p_akiec + p_bcc + p_mel" in page
    link = "/files/run1/evaluations/isic_like/report.md"
    assert link in page
    assert client.get(link).get_data(as_text=True).startswith("# External evaluation: isic_like")
    assert client.get("/files/run1/evaluations/isic_like/reliability.png").status_code == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    (run.model.evaluations / "leak").mkdir()
    (run.model.evaluations / "leak" / "report.md").symlink_to(secret)
    evaluations = "/files/run1/evaluations"
    for path in (f"{evaluations}/isic_like/predictions.csv", f"{evaluations}/isic_like/metrics.json",
                 f"{evaluations}/nope/report.md", f"{evaluations}/%2E%2E/report.md", f"{evaluations}/leak/report.md",
                 "/files/nope/evaluations/isic_like/report.md"):
        assert client.get(path).status_code == 404, path
    # Slashes never reach the route (Dash's page route answers such paths with the app's HTML).
    assert "TOP SECRET" not in client.get(f"{evaluations}/..%2F..%2F..%2Fsecret.txt/report.md").get_data(as_text=True)


def _models_page(client) -> str:
    payload = {"output": "..page.children...shown.data..",
               "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
               "inputs": [{"id": "url", "property": "pathname", "value": "/runs/run1/models"},
                          {"id": "url", "property": "search", "value": ""},
                          {"id": "refresh", "property": "n_intervals", "value": 1}],
               "changedPropIds": ["refresh.n_intervals"],
               "state": [{"id": "shown", "property": "data", "value": None}]}
    response = client.post("/_dash-update-component", json=payload)
    assert response.status_code == 200
    return json.dumps(response.get_json(), separators=(",", ":"))
