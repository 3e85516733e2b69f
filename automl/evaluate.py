"""``automl ensemble``: choose the ensemble on validation, judge it and every member on the test split.

Writes ``RESULTS/NAME/ensemble/``: ``ensemble.json`` (method, members, weights, greedy path),
``metrics.json`` (every member and the ensemble on val and test, with bootstrap confidence
intervals on test), ``report.md`` (tables next to the seeds' published numbers),
``confusion_matrix.png`` and, for the binary task, ``roc.png``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from automl import console
from automl.ensemble import METHODS, build_ensemble
from automl.errors import UserError
from automl.files import atomic_write, staged_dir, write_json
from automl.layout import RunLayout
from automl.metrics import HEADLINE, classification_metrics
from automl.objective import Objective
from automl.published import PUBLISHED


def evaluate_run(run_dir: Path, method: str = "greedy", bootstrap: int = 1000, seed: int = 0) -> dict:
    """Build the ensemble from the retrained members' validation probabilities and evaluate on test."""
    if method not in METHODS:
        raise UserError(f"--method {method}: use one of {', '.join(METHODS)}")
    run = RunLayout(run_dir)
    info = run.read_info(required=True)
    objective = Objective.from_record(info)
    members, labels = run.read_members(), run.read_labels()
    classes = tuple(str(c) for c in labels["class_names"])
    ids = list(members["member_id"])
    val = [run.read_member_probs(m, "val") for m in ids]
    test = [run.read_member_probs(m, "test") for m in ids]
    ensemble = build_ensemble(method, val, labels["y_val"], objective)
    results = {
        m: {"val": classification_metrics(labels["y_val"], v, classes),
            "test": classification_metrics(labels["y_test"], t, classes)}
        for m, v, t in zip(ids, val, test, strict=True)
    }
    ens_val, ens_test = ensemble.predict(val), ensemble.predict(test)
    results["ensemble"] = {
        "val": classification_metrics(labels["y_val"], ens_val, classes),
        "test": classification_metrics(labels["y_test"], ens_test, classes),
        "test_ci95": bootstrap_ci(labels["y_test"], ens_test, classes, bootstrap, seed),
    }
    # The best single member is chosen on validation, by the objective, like everything else.
    best_member = ids[objective.best_index([results[m]["val"][objective.key] for m in ids])]
    results[best_member]["test_ci95"] = bootstrap_ci(labels["y_test"], test[ids.index(best_member)], classes,
                                                     bootstrap, seed)
    summary = {
        "method": method,
        "objective": objective.to_record(),
        "members": ids,
        "weights": dict(zip(ids, ensemble.weights, strict=True)),
        "greedy_picks": [ids[i] for i in ensemble.picks],
        "greedy_scores": ensemble.scores,
        "best_member": best_member,
        "classes": list(classes),
        "task": info.get("task"),
        "split": info.get("split"),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with staged_dir(run.ensemble) as stage:
        def at(path: Path) -> Path:  # the run's own file name, inside the stage
            return stage / path.relative_to(run.ensemble)

        write_json(at(run.ensemble_json), summary)
        write_json(at(run.ensemble_metrics), results)
        _plot_confusion(results["ensemble"]["test"]["confusion_matrix"], classes, at(run.confusion_png))
        if len(classes) == 2:
            _plot_roc(labels["y_test"], {"ensemble": ens_test, best_member: test[ids.index(best_member)]},
                      at(run.roc_png))
        atomic_write(at(run.report), report_markdown(run.name, info, summary, results))
    ens, best = results["ensemble"]["test"], results[best_member]["test"]
    console.info(
        f"{method} ensemble of {sum(w > 0 for w in ensemble.weights)} members by {objective}: test "
        f"{objective.key} {ens[objective.key]:.3f} (best member {best_member}: {best[objective.key]:.3f}); "
        + ", ".join(f"{k} {ens[k]:.3f}" for k in HEADLINE if k != objective.key)
        + f"; report: {run.report}"
    )
    return results


def bootstrap_ci(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], rounds: int, seed: int) -> dict:
    """95% percentile intervals of the headline metrics over image-level bootstrap resamples."""
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in HEADLINE}
    for _ in range(rounds):
        rows = rng.integers(0, len(y), len(y))
        m = classification_metrics(y[rows], probs[rows], classes)
        for name in HEADLINE:
            draws[name].append(m[name])
    return {name: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for name, v in draws.items()}


def report_markdown(name: str, info: dict, summary: dict, results: dict) -> str:
    best = summary["best_member"]
    lines = [
        f"# {name}: ensemble report", "",
        (f"Task {info.get('task')}, {info.get('image_size')} pixels, split: {summary['split']}. "
         f"Ensemble method: {summary['method']}, selected by {_objective_text(summary)} on validation only; "
         "the test split was used for nothing but this report."),
        "", "## Test split", "",
        "| model | weight | balanced accuracy | macro-F1 | accuracy | AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in ["ensemble", *summary["members"]]:
        m, ci = results[model]["test"], results[model].get("test_ci95", {})
        cells = " | ".join(
            f"{m[k]:.3f}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else "")
            for k in HEADLINE
        )
        weight = "" if model == "ensemble" else f"{summary['weights'][model]:.2f}"
        label = f"{model} (best member on val)" if model == best else model
        lines.append(f"| {label} | {weight} | {cells} |")
    ens_val, best_val = results["ensemble"]["val"], results[best]["val"]
    key = Objective.from_record(summary.get("objective") or {}).key
    lines += ["", (f"Validation {key.replace('_', ' ')} (the objective): ensemble {ens_val[key]:.3f}, best member "
                   f"{best_val[key]:.3f}. Brackets: 95% bootstrap intervals over test images."), "",
              "## Per class (ensemble, test)", "", "| class | precision | recall | F1 | support |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for cls, row in results["ensemble"]["test"]["per_class"].items():
        lines.append(f"| {cls} | {row['precision']:.2f} | {row['recall']:.2f} | {row['f1']:.2f} | {row['support']} |")
    lines += ["", "## Published numbers, for scale", "",
              "None of these used a lesion-grouped split; image-level splits put images of one lesion on both sides.",
              "",
              "| source | resolution | split | accuracy | macro-F1 | AUC |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for row in (p for p in PUBLISHED if p["task"] == info.get("task")):
        cells = " | ".join(f"{row[k]:.3f}" if k in row else "-" for k in ("accuracy", "macro_f1", "auc"))
        lines.append(f"| {row['source']} | {row['resolution']} | {row['split']} | {cells} |")
    lines += ["", "## How this was made", "", *_provenance(info)]
    return "\n".join(lines) + "\n"


def _objective_text(summary: dict) -> str:
    return str(Objective.from_record(summary.get("objective") or {}))


def _provenance(info: dict) -> list[str]:
    """The command, the machine and the wall time of each stage, from ``run.json``."""
    machine = info.get("machine") or {}
    retrain = info.get("retrain") or {}
    lines = []
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    if machine:
        lines.append(f"- machine: {machine.get('cpus')} CPUs, {machine.get('memory_gib')} GiB, "
                     f"{machine.get('platform')}, Python {machine.get('python')}, automl {machine.get('automl')}")
    if info.get("wall_s") is not None:
        lines.append(f"- search: {info.get('num_samples')} trials ({info.get('searcher')} + {info.get('scheduler')}), "
                     f"{info['wall_s'] / 60:.1f} min wall, {info.get('started')} to {info.get('ended')}")
    if info.get("search_copied_from"):
        lines.append(f"- search stage reused from run {info['search_copied_from']}")
    if retrain:
        lines.append(f"- retrain: top {retrain.get('top_k')} x {retrain.get('seeds')} seed(s) = "
                     f"{retrain.get('members')} members, up to {retrain.get('epochs')} epochs, "
                     f"{retrain['wall_s'] / 60:.1f} min wall, {retrain.get('started')} to {retrain.get('ended')}")
    return lines or ["- not recorded (run made before automl recorded provenance)"]


def _plot_confusion(matrix: list[list[int]], classes: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    recall = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.8 * len(classes)))
    ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{counts[i, j]}\n{recall[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if recall[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("ensemble, test split (counts, row %)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_roc(y: np.ndarray, models: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, probs in models.items():
        fpr, tpr, _ = roc_curve(y, probs[:, 1])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, probs[:, 1]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("malignant vs benign, test split")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
