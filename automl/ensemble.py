"""``automl ensemble``: choose on validation, judge every member and the ensemble on the test split.

Chosen on the validation split only, in this order:

1. the test-time augmentation mode (``none | flips | dihedral``, :mod:`automl.posthoc`): for each mode the
   ensemble is built on the members' probabilities averaged over that mode's views; the mode whose ensemble
   scores best by the run's objective wins, a tie going to the cheaper mode;
2. the ensemble weights (greedy, mean or weighted: :mod:`automl.ensemble_methods`), on those probabilities as
   trained: the objective judges the models, and the decision rule is applied on top of them;
3. one temperature on the ensemble's output (after the decision rule and the weighted average, where the
   exported graph applies it), fitted by minimising validation log loss.

The decision rule (``balanced | prior``) is the user's setting: ``prior`` multiplies each member's
probabilities by its training prior / effective class mix before the average, which trades balanced
accuracy for accuracy, so no objective picks it. Members are reported as they run inside the exported
graph (their TTA views and the decision rule); the ensemble after its temperature, with log loss, ECE and
Brier score before and after it. When ``refit/`` holds a refit of the ensemble's members made from the
current retrain, its test figures are reported too, with the weights, TTA, temperature and decision
chosen here.

Writes ``RESULTS/NAME/ensemble/``: ``ensemble.json`` (method, members, weights, greedy path, TTA,
decision, temperature), ``metrics.json`` (every member and the ensemble on val and test, with bootstrap
confidence intervals on test, the ensemble's calibration, and ``refit_ensemble``), ``report.md`` (tables
next to the seeds' published numbers), ``confusion_matrix.png`` and, for the binary task, ``roc.png``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from automl import console
from automl.ensemble_methods import METHODS, Ensemble, build_ensemble
from automl.errors import UserError
from automl.files import atomic_write, staged_dir, write_json
from automl.layout import RunLayout, member_image_size, size_text
from automl.metrics import HEADLINE, bootstrap_intervals, calibration_metrics, classification_metrics, headline_metrics
from automl.objective import Objective
from automl.posthoc import (
    DECISIONS,
    TTA_MODES,
    VIEW_COUNT,
    apply_temperature,
    combine,
    correct_prior,
    fit_temperature,
    prior_factors,
    tta_modes,
)
from automl.published import PUBLISHED
from automl.stages import DECISION, ENSEMBLE_METHOD


def evaluate_run(run_dir: Path, method: str = ENSEMBLE_METHOD, decision: str = DECISION, bootstrap: int = 1000,
                 seed: int = 0) -> dict:
    """Choose on validation, evaluate on test; see the module docstring for what is chosen and how."""
    if method not in METHODS:
        raise UserError(f"--method {method}: use one of {', '.join(METHODS)}")
    if decision not in DECISIONS:
        raise UserError(f"--decision {decision}: use one of {', '.join(DECISIONS)}")
    run = RunLayout(run_dir)
    info = run.read_info(required=True)
    objective = Objective.from_record(info)
    members, labels = run.read_members(), run.read_labels()
    classes = tuple(str(c) for c in labels["class_names"])
    y_val, y_test = labels["y_val"], labels["y_test"]
    ids = list(members["member_id"])
    probs = _member_probs(run, ids, member_image_size(info))
    tta, ensemble, tta_scores = choose_tta(method, {mode: p["val"] for mode, p in probs.items()}, y_val, objective)
    val, test = probs[tta]["val"], probs[tta]["test"]
    has_mix = {"class_prior", "class_mix"} <= set(members.columns)
    factors = prior_factors(members, run.members) if decision == "prior" or has_mix else None
    decided = factors if decision == "prior" else None
    post = _post_process(val, test, ensemble.weights, decided, y_val, y_test)
    # Members as they run inside the exported graph: their TTA views and the decision rule, no temperature.
    results = {
        m: {"val": classification_metrics(y_val, v, classes), "test": classification_metrics(y_test, t, classes)}
        for m, v, t in zip(ids, _decided(val, decided), _decided(test, decided), strict=True)
    }
    results["ensemble"] = {
        "val": classification_metrics(y_val, post["val"], classes),
        "test": classification_metrics(y_test, post["test"], classes),
        "test_ci95": bootstrap_ci(y_test, post["test"], classes, bootstrap, seed),
        "calibration": post["calibration"],
    }
    # The best single member is chosen on validation, by the objective, like everything else.
    best_member = ids[objective.best_index([results[m]["val"][objective.key] for m in ids])]
    best_test = _decided(test, decided)[ids.index(best_member)]
    results[best_member]["test_ci95"] = bootstrap_ci(y_test, best_test, classes, bootstrap, seed)
    weights = dict(zip(ids, ensemble.weights, strict=True))
    refit = _refit_results(run, info, weights, tta, decision, post["temperature"], y_test, classes, bootstrap, seed)
    if refit:
        results["refit_ensemble"] = refit
    summary = {
        "method": method, "objective": objective.to_record(), "members": ids, "weights": weights,
        "greedy_picks": [ids[i] for i in ensemble.picks], "greedy_scores": ensemble.scores,
        "best_member": best_member, "classes": list(classes), "task": info.get("task"), "split": info.get("split"),
        "tta": tta, "tta_scores": tta_scores, "decision": decision, "temperature": post["temperature"],
        "prior_factors": {m: f.tolist() for m, f in decided.items()} if decided else None,
        "decisions": _by_decision(val, test, ensemble.weights, factors, y_val, y_test, classes) if factors else None,
        "refit": bool(refit), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write(run, info, summary, results, y_test, {"ensemble": post["test"], best_member: best_test})
    ens, best = results["ensemble"]["test"], results[best_member]["test"]
    console.info(
        f"{method} ensemble of {sum(w > 0 for w in ensemble.weights)} members by {objective} (TTA {tta}, decision "
        f"{decision}, temperature {post['temperature']:.2f}): test {objective.key} {ens[objective.key]:.3f} (best "
        f"member {best_member}: {best[objective.key]:.3f}); "
        + ", ".join(f"{k} {ens[k]:.3f}" for k in HEADLINE if k != objective.key)
        + f"; report: {run.report}"
    )
    return results


def choose_tta(method: str, val_by_mode: dict[str, list[np.ndarray]], y_val: np.ndarray,
               objective: Objective) -> tuple[str, Ensemble, dict[str, float]]:
    """The TTA mode whose ensemble scores best on validation by the objective (a tie goes to the cheaper mode),
    that ensemble, and every mode's validation score. Modes are tried in :data:`automl.posthoc.TTA_MODES` order."""
    modes = [mode for mode in TTA_MODES if mode in val_by_mode]
    ensembles = [build_ensemble(method, val_by_mode[mode], y_val, objective) for mode in modes]
    scores = [objective.score(y_val, e.predict(val_by_mode[mode])) for mode, e in zip(modes, ensembles, strict=True)]
    best = objective.best_index(scores)
    best = 0 if best is None else best
    return modes[best], ensembles[best], dict(zip(modes, scores, strict=True))


def _member_probs(run: RunLayout, ids: list[str], image_size) -> dict[str, dict[str, list[np.ndarray]]]:
    """``{tta mode: {split: [probabilities per member]}}``, for the modes every member has files for (members
    retrained before TTA existed have the plain ones only)."""
    modes = tta_modes(image_size or (1, 1))
    present = [mode for mode in modes if mode == "none" or all(
        run.member_probs(run.member(m), split, mode).is_file() for m in ids for split in ("val", "test"))]
    return {mode: {split: [run.read_member_probs(m, split, mode) for m in ids] for split in ("val", "test")}
            for mode in present}


def _decided(member_probs: list[np.ndarray], factors: dict[str, np.ndarray] | None) -> list[np.ndarray]:
    """Each member's probabilities under the decision rule: prior-corrected when ``factors`` are given."""
    if factors is None:
        return list(member_probs)
    return [correct_prior(p, f) for p, f in zip(member_probs, factors.values(), strict=True)]


def _post_process(val: list[np.ndarray], test: list[np.ndarray], weights: list[float],
                  factors: dict[str, np.ndarray] | None, y_val: np.ndarray, y_test: np.ndarray) -> dict:
    """The graph's tail on val and test: decision rule, weighted average, and the temperature fitted on val
    (with log loss, ECE and Brier score before and after it)."""
    fs = list(factors.values()) if factors is not None else None
    raw_val, raw_test = combine(val, weights, fs), combine(test, weights, fs)
    temperature = fit_temperature(raw_val, y_val)
    val, test = apply_temperature(raw_val, temperature), apply_temperature(raw_test, temperature)
    calibration = {"temperature": temperature} | {
        split: {"before": calibration_metrics(y, raw), "after": calibration_metrics(y, final)}
        for split, y, raw, final in (("val", y_val, raw_val, val), ("test", y_test, raw_test, test))}
    return {"temperature": temperature, "val": val, "test": test, "calibration": calibration}


def _by_decision(val, test, weights, factors, y_val, y_test, classes) -> dict[str, dict[str, float]]:
    """The ensemble's headline test metrics under each decision rule (same members, weights and TTA)."""
    out = {}
    for decision, chosen in (("balanced", None), ("prior", factors)):
        probs = _post_process(val, test, weights, chosen, y_val, y_test)["test"]
        metrics = classification_metrics(y_test, probs, classes)
        out[decision] = {k: metrics[k] for k in HEADLINE}
    return out


def _refit_results(run: RunLayout, info: dict, weights: dict[str, float], tta: str, decision: str,
                   temperature: float, y_test: np.ndarray, classes: tuple[str, ...], bootstrap: int,
                   seed: int) -> dict | None:
    """The refit ensemble on test with the weights, TTA, decision and temperature chosen here on validation;
    ``None`` when there is no refit of these members (or it was made from an earlier retrain)."""
    if not run.refit_members.is_file():
        return None
    chosen = [m for m, w in weights.items() if w > 0]
    table = run.read_members(refit=True)
    stale = (info.get("refit") or {}).get("retrain_ended") != (info.get("retrain") or {}).get("ended")
    if stale or not set(chosen) <= set(table["member_id"]):
        console.info(f"{run.refit}: not a refit of this ensemble's members (made from an earlier retrain or "
                     f"ensemble); left out of the report. Run automl retrain {run.name} --refit to redo it")
        return None
    table = table.set_index("member_id").loc[chosen].reset_index()
    factors = list(prior_factors(table, run.refit_members).values()) if decision == "prior" else None
    raw = combine([run.read_member_probs(m, "test", tta, refit=True) for m in chosen],
                  [weights[m] for m in chosen], factors)
    probs = apply_temperature(raw, temperature)
    return {"members": chosen, "epochs": dict(zip(chosen, map(int, table["epochs"]), strict=True)),
            "test": classification_metrics(y_test, probs, classes),
            "test_ci95": bootstrap_ci(y_test, probs, classes, bootstrap, seed),
            "calibration": {"temperature": temperature, "test": {"before": calibration_metrics(y_test, raw),
                                                                 "after": calibration_metrics(y_test, probs)}}}


def _write(run: RunLayout, info: dict, summary: dict, results: dict, y_test: np.ndarray,
           roc: dict[str, np.ndarray]) -> None:
    """``ensemble/``: summary, metrics, plots and report, swapped in as a whole."""
    classes = tuple(summary["classes"])
    with staged_dir(run.ensemble) as stage:
        def at(path: Path) -> Path:  # the run's own file name, inside the stage
            return stage / path.relative_to(run.ensemble)

        write_json(at(run.ensemble_json), summary)
        write_json(at(run.ensemble_metrics), results)
        _plot_confusion(results["ensemble"]["test"]["confusion_matrix"], classes, at(run.confusion_png))
        if len(classes) == 2:
            _plot_roc(y_test, roc, at(run.roc_png))
        atomic_write(at(run.report), report_markdown(run.name, info, summary, results))


def bootstrap_ci(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], rounds: int, seed: int) -> dict:
    """95% percentile intervals of the headline metrics over image-level bootstrap resamples."""
    return bootstrap_intervals(len(y), lambda rows: headline_metrics(y[rows], probs[rows]), rounds, seed)


def _searched_at(info: dict) -> str:
    searched = tuple(info["image_size"])
    return "" if searched == member_image_size(info) else f" (searched at {size_text(searched)})"


def report_markdown(name: str, info: dict, summary: dict, results: dict) -> str:
    best = summary["best_member"]
    lines = [
        f"# {name}: ensemble report", "",
        (f"Task {info.get('task')}, members at {size_text(member_image_size(info))} pixels"
         f"{_searched_at(info)}, split: {summary['split']}. "
         f"Ensemble method: {summary['method']}, selected by {_objective_text(summary)} on validation only; "
         "the test split was used for nothing but this report."),
        "", "## Test split", "",
        "| model | weight | balanced accuracy | macro-F1 | accuracy | AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in ["ensemble", *summary["members"]]:
        cells = _headline_cells(results[model]["test"], results[model].get("test_ci95", {}))
        weight = "" if model == "ensemble" else f"{summary['weights'][model]:.2f}"
        label = f"{model} (best member on val)" if model == best else model
        lines.append(f"| {label} | {weight} | {cells} |")
    ens_val, best_val = results["ensemble"]["val"], results[best]["val"]
    key = Objective.from_record(summary.get("objective") or {}).key
    lines += ["", (f"Validation {key.replace('_', ' ')} (the objective): ensemble {ens_val[key]:.3f}, best member "
                   f"{best_val[key]:.3f}. Brackets: 95% bootstrap intervals over test images."), "",
              *_posthoc_lines(summary, results), *_refit_lines(summary, results),
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


def _headline_cells(metrics: dict, ci: dict) -> str:
    return " | ".join(f"{metrics[k]:.3f}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if ci.get(k) else "")
                      for k in HEADLINE)


def _posthoc_lines(summary: dict, results: dict) -> list[str]:
    """What the ensemble does after its members: TTA, decision rule, temperature (runs before them have none)."""
    if "tta" not in summary:
        return []
    scores = ", ".join(f"{mode} {score:.3f}" for mode, score in (summary.get("tta_scores") or {}).items())
    decision = summary["decision"]
    lines = ["## Test-time augmentation, decision rule and calibration", "",
             f"- **TTA: {summary['tta']}** ({VIEW_COUNT[summary['tta']]} view(s) per member, averaged), chosen on "
             f"validation by {_objective_text(summary)}: {scores} (a tie goes to the cheaper mode).",
             f"- **Decision rule: {decision}**, the user's setting (`--decision`); no objective chooses it, as it "
             "trades balanced accuracy for accuracy. "
             + ("Each member's probabilities are multiplied by training prior / the class mix its imbalance setting "
                "made it learn, renormalised, before the average (Saerens et al. 2002)." if decision == "prior" else
                "Members' probabilities as trained (their re-balanced class mix favours balanced accuracy).")]
    if summary.get("decisions"):
        lines += ["", "| decision rule (ensemble, test) | balanced accuracy | macro-F1 | accuracy | AUC |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {name}{' (this ensemble)' if name == decision else ''} | {_headline_cells(m, {})} |"
                  for name, m in summary["decisions"].items()]
    cal = results["ensemble"]["calibration"]
    lines += ["", (f"- **Temperature T = {cal['temperature']:.3f}**: one temperature on the ensemble's averaged "
                   "probabilities (softmax(log p / T), applied last), fitted on validation by minimising log loss. It "
                   "changes no argmax, so accuracy, balanced accuracy, macro-F1 and the confusion matrix are the same "
                   "before and after; only the probabilities (log loss, ECE, Brier score and, with more than two "
                   "classes, the one-vs-rest AUC, which ranks images across rows) move."), "",
              *_calibration_table(cal["test"]), ""]
    return lines


def _calibration_table(before_after: dict) -> list[str]:
    rows = ["| test split | log loss | ECE (15 bins, top label) | Brier score |", "| --- | ---: | ---: | ---: |"]
    for when in ("before", "after"):
        m = before_after[when]
        rows.append(f"| {when} temperature | {m['loss']:.3f} | {m['ece']:.3f} | {m['brier']:.3f} |")
    return rows


def _refit_lines(summary: dict, results: dict) -> list[str]:
    """The refit ensemble next to the validation run's, when ``retrain --refit`` has run for these members."""
    refit = results.get("refit_ensemble")
    if not refit:
        return []
    epochs = ", ".join(f"{m} {n}" for m, n in refit["epochs"].items())
    return ["## Refit on train+val", "",
            (f"The ensemble's members trained again from scratch on train+val, each for the epochs its validation "
             f"run chose ({epochs}), at that run's learning rates. Ensemble weights, TTA mode "
             f"({summary.get('tta')}), temperature ({refit['calibration']['temperature']:.3f}) and decision rule "
             f"({summary.get('decision')}) carry over from the validation run: with val in the training set "
             "nothing is left to choose them on. The test split stays untouched."), "",
            "| ensemble (test) | balanced accuracy | macro-F1 | accuracy | AUC |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| validation run (train only) | {_headline_cells(results['ensemble']['test'], {})} |",
            f"| refit (train+val) | {_headline_cells(refit['test'], refit.get('test_ci95', {}))} |", "",
            *_calibration_table(refit["calibration"]["test"]), ""]


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
    if info.get("refit") and info["refit"].get("wall_s") is not None:
        lines.append(f"- refit on train+val: {info['refit'].get('members')} members, "
                     f"{info['refit']['wall_s'] / 60:.1f} min wall, {info['refit'].get('started')} to "
                     f"{info['refit'].get('ended')}")
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
