"""Quality: our reference ensembles and best members beside the published HAM10000 / DermaMNIST numbers.

    python benchmarks/quality.py [--results results] [--out results/benchmarks]

Reads ``RESULTS/reference*/`` (written by ``automl run``) and ``RESULTS/seed000_proposed`` (``automl
train``); nothing is trained. Every row names its split protocol and resolution: published rows used
image-level splits that put images of one lesion on both sides, so they are easier than our
lesion-grouped split, and only the ``reference-official-split`` rows (the run named
``reference-dermamnist``, on MedMNIST's official split file) are on their protocol. Our rows carry
95% bootstrap intervals over test images. Writes ``quality.json`` and ``quality.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, print_table, save_figure, write_result

from automl.layout import RunLayout
from automl.objective import HEADLINE
from automl.published import PUBLISHED

METRICS = HEADLINE
# The scale point: one hand-made VGG-style CNN (3 blocks of 2 conv+BN, class weights, flips,
# early stopping) on a lesion-grouped split at 28px.
HAND_MADE = {"source": "hand-made VGG-style CNN (issue 4's scale point)", "split": "lesion-grouped",
             "resolution": "28x28", "balanced_accuracy": 0.48, "macro_f1": 0.41, "accuracy": 0.66, "auc": 0.88}


def our_rows(results: Path) -> list[dict]:
    """Ensemble and best member of every ``reference*`` run, plus seed 000's model trained here."""
    rows = []
    for run in sorted(results.glob("reference*")):
        layout = RunLayout(run)
        if not layout.ensemble_metrics.is_file():
            print(f"skipping {run.name}: no {layout.ensemble_metrics} (run automl run or automl ensemble first)")
            continue
        metrics, summary, info = layout.read_ensemble_metrics(), layout.read_ensemble(), layout.read_info()
        size = "x".join(str(v) for v in info.get("image_size", []))
        for model, label in (("ensemble", f"ours: {run.name}, {summary['method']} ensemble"),
                             (summary["best_member"], f"ours: {run.name}, best member ({summary['best_member']})")):
            test, ci = metrics[model]["test"], metrics[model].get("test_ci95", {})
            rows.append({"source": label, "split": summary["split"], "resolution": size}
                        | {m: test[m] for m in METRICS} | {f"{m}_ci95": ci[m] for m in METRICS if m in ci})
    seed000 = results / "seed000_proposed" / "metrics.json"
    if seed000.is_file():
        m = json.loads(seed000.read_text())
        rows.append({"source": "ours: seed 000's proposed CNN, trained here (automl train)",
                     "split": m["data"]["split"], "resolution": "x".join(map(str, m["data"]["image_size"]))}
                    | {k: m[f"test_{k}"] for k in METRICS})
    return rows


def published_rows() -> list[dict]:
    return [{"source": p["source"], "split": p["split"], "resolution": p["resolution"]}
            | {m: p[m] for m in METRICS if m in p}
            for p in PUBLISHED if p["task"] == "multiclass"] + [HAND_MADE]


def cell(row: dict, metric: str) -> str:
    if metric not in row:
        return "-"
    ci = row.get(f"{metric}_ci95")
    return f"{row[metric]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.5), sharey=True)
    labels = [f"{r['source']}\n{r['split'][:60]}, {r['resolution']}" for r in rows]
    for ax, metric in zip(axes, ("accuracy", "auc"), strict=True):
        for i, row in enumerate(rows):
            if metric not in row:
                continue
            ours = row["source"].startswith("ours")
            ci = row.get(f"{metric}_ci95")
            err = [[row[metric] - ci[0]], [ci[1] - row[metric]]] if ci else None
            ax.barh(i, row[metric], xerr=err, color="tab:blue" if ours else "tab:gray", capsize=3)
            ax.text((ci[1] if ci else row[metric]) + 0.005, i, f"{row[metric]:.3f}", va="center", fontsize=7)
        ax.set_xlim(0.5, 1.0)
        ax.set_title(f"test {metric} (blue: ours, with 95% bootstrap CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].invert_yaxis()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()
    rows = our_rows(args.results) + published_rows()
    print_table("Test-split quality: ours (lesion-grouped and official DermaMNIST splits) and published numbers",
                ["source", "split", "resolution", "balanced acc", "macro-F1", "accuracy", "AUC"],
                [[r["source"], r["split"], r["resolution"], *(cell(r, m) for m in METRICS)] for r in rows])
    write_result(args.out / "quality.json", {"metrics": list(METRICS), "rows": rows})
    plot(rows, args.out / "quality.png")
    print(f"wrote {args.out / 'quality.json'} and {args.out / 'quality.png'}")


if __name__ == "__main__":
    main()
