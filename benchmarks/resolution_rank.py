"""Do cheap low-resolution scores rank configurations as they rank at a higher resolution?

Draws configurations at random from a space (as a random search draws them; only those that fit both sizes),
trains each from scratch at a low and at a high image size for the same number of epochs (same split, seed and
schedule, no early stopping), and compares each configuration's best validation score at the two sizes: Spearman
and Kendall rank correlation, and what choosing the top K at the low size would have found at the high size
(regret against the best high-resolution configuration). The recipe of ``automl/search_spaces/ham10000_hires.yaml``
is chosen from it::

    python benchmarks/resolution_rank.py --configs 12 --epochs 8 --low 32 --high 64

Resumable: every finished (configuration, size) is a line of ``results/benchmarks/runs/resolution_rank-*/rows.jsonl``
and is not trained again. Prints the tables and writes ``results/benchmarks/resolution_rank.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (DEFAULT_OUT, REPO, RUNS, append_row, fmt, markdown_table, print_table,  # noqa: E402
                     read_rows, sample_params, write_result, write_text_result)

from automl import console  # noqa: E402
from automl.errors import SpecError  # noqa: E402
from automl.hparams import ModelConfig  # noqa: E402
from automl.spec import load_spec  # noqa: E402

DEFAULT_SPACE = REPO / "automl" / "search_spaces" / "ham10000_hires.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000_200x150"


def feasible_draws(space_file: Path, count: int, sizes: list[int], seed: int) -> list[dict]:
    """The first ``count`` random draws of the space that fit every size (in draw order)."""
    drawn = []
    for params in sample_params(space_file, count * 4, seed):
        try:
            config = ModelConfig.from_params(params)
            for size in sizes:
                config.check_image_size(size, size)
        except SpecError:
            continue
        drawn.append(params)
        if len(drawn) == count:
            return drawn
    raise SystemExit(f"{space_file}: fewer than {count} of {count * 4} draws fit {sizes} px")


def train_one(params: dict, dataset, spec, epochs: int) -> dict:
    """One configuration trained for exactly ``epochs`` epochs; its validation curve and cost."""
    import dataclasses

    from automl.trial import fit_candidate

    training = dataclasses.replace(spec.training, epochs=epochs, early_stopping_patience=epochs + 1)
    result = fit_candidate(ModelConfig.from_params(params), dataset, spec.objective, training, epochs=epochs)
    curve = [row[spec.objective.name] for row in result.history]
    return {"curve": curve, "best": float(curve[spec.objective.best_index(curve)]),
            "epoch_s": [row.get("epoch_s") for row in result.history],
            "parameters": int(result.model.count_params()), "seconds": result.seconds}


def rank_table(rows: list[dict], low: int, high: int, ks=(1, 3, 5)) -> dict:
    """Rank correlations of the best scores at the two sizes, and the top-K regret."""
    from scipy.stats import kendalltau, spearmanr

    by = {(r["config"], r["size"]): r for r in rows}
    configs = sorted({c for c, s in by if (c, low) in by and (c, high) in by})
    if len(configs) < 3:
        return {"configs": len(configs)}
    lo = np.array([by[c, low]["best"] for c in configs])
    hi = np.array([by[c, high]["best"] for c in configs])
    rho, rho_p = spearmanr(lo, hi)
    tau, tau_p = kendalltau(lo, hi)
    order = np.argsort(-lo)
    topk = {k: {"best_high_of_top_low": float(hi[order[:k]].max()), "regret": float(hi.max() - hi[order[:k]].max()),
                "contains_best_high": bool(np.argmax(hi) in order[:k])} for k in ks if k <= len(configs)}
    cost = {size: float(np.median([np.median(by[c, size]["epoch_s"]) for c in configs])) for size in (low, high)}
    return {"configs": len(configs), "spearman": float(rho), "spearman_p": float(rho_p), "kendall": float(tau),
            "kendall_p": float(tau_p), "best_high": float(hi.max()), "median_high": float(np.median(hi)),
            "top_k": topk, "median_epoch_s": cost, "cost_ratio": cost[high] / cost[low],
            "gain_mean": float(np.mean(hi - lo)), "gain_of_top_low": float(hi[order[0]] - lo[order[0]])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--low", type=int, default=32, help="the cheap size (square, px)")
    parser.add_argument("--high", type=int, default=64, help="the size it should rank for (square, px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report-only", action="store_true", help="tables from the rows so far, no training")
    args = parser.parse_args(argv)

    from automl.data import load_dataset

    spec = load_spec(args.space)
    tag = f"{args.space.stem}-{args.low}-{args.high}-e{args.epochs}-s{args.seed}"
    rows_file = args.out / RUNS / f"resolution_rank-{tag}" / "rows.jsonl"
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    draws = feasible_draws(args.space, args.configs, [args.low, args.high], args.seed)
    done = {(r["config"], r["size"]) for r in read_rows(rows_file)}
    datasets = {}
    for i, params in enumerate(draws if not args.report_only else []):
        for size in (args.low, args.high):
            if (i, size) in done:
                continue
            if size not in datasets:
                split = spec.data.split
                datasets[size] = load_dataset(args.data, (size, size), spec.data.task, split.method, split.fractions,
                                              split.seed)
            started = time.monotonic()
            row = {"config": i, "size": size, "params": params, **train_one(params, datasets[size], spec, args.epochs)}
            append_row(rows_file, row)
            console.info(f"config {i + 1}/{len(draws)} at {size} px: best {row['best']:.3f}, "
                         f"{np.median(row['epoch_s']):.1f} s/epoch, {time.monotonic() - started:.0f} s")
    rows = read_rows(rows_file)
    summary = rank_table(rows, args.low, args.high)
    report(args, rows, summary, tag)


def report(args, rows: list[dict], summary: dict, tag: str) -> None:
    by = {(r["config"], r["size"]): r for r in rows}
    configs = sorted({c for c, _ in by})
    columns = ["config", "family", f"best at {args.low} px", f"best at {args.high} px", f"s/epoch {args.low}",
               f"s/epoch {args.high}", f"parameters at {args.high} px"]
    table = []
    for c in configs:
        low, high = by.get((c, args.low)), by.get((c, args.high))
        params = (low or high)["params"]
        seconds = [fmt(r and float(np.median(r["epoch_s"])), 1) for r in (low, high)]
        table.append([c, params.get("family", "cnn"), fmt(low and low["best"]), fmt(high and high["best"]), *seconds,
                      f"{(high or low)['parameters']:,}"])
    title = (f"Best validation balanced accuracy in {args.epochs} epochs, {len(configs)} random configurations of "
             f"{args.space.name}")
    print_table(title, columns, table, left=("family",))
    lines = [markdown_table(columns, table, title=title)]
    if summary.get("configs", 0) >= 3:
        srows = [["Spearman rho", fmt(summary["spearman"]), fmt(summary["spearman_p"])],
                 ["Kendall tau", fmt(summary["kendall"]), fmt(summary["kendall_p"])]]
        srows += [[f"top {k} at {args.low} px: best at {args.high} px (regret)",
                   f"{fmt(v['best_high_of_top_low'])} ({fmt(v['regret'])})",
                   "holds the best" if v["contains_best_high"] else "misses the best"]
                  for k, v in summary["top_k"].items()]
        srows.append([f"{args.high} px - {args.low} px, mean over configurations (of the top one at {args.low} px)",
                      f"{summary['gain_mean']:+.3f} ({summary['gain_of_top_low']:+.3f})", ""])
        srows.append(["median s/epoch", f"{summary['median_epoch_s'][args.low]:.1f} vs "
                      f"{summary['median_epoch_s'][args.high]:.1f}", f"x{summary['cost_ratio']:.1f}"])
        caption = (f"{summary['configs']} configurations with both sizes; best at {args.high} px "
                   f"{fmt(summary['best_high'])}. Seconds per epoch measured while other work shared the 2 cores.")
        heads = ["measure", "value", "p (two-sided) / note"]
        print_table(f"{args.low} px ranking {args.high} px", heads, srows, caption=caption)
        lines.append(markdown_table(heads, srows, title=f"{args.low} px ranking {args.high} px", caption=caption))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_result(args.out / f"resolution_rank-{tag}.md", "\n".join(lines))
    write_result(args.out / f"resolution_rank-{tag}.json",
                 {"space": str(args.space.relative_to(REPO)) if args.space.is_relative_to(REPO) else str(args.space),
                  "data": args.data.name, "epochs": args.epochs, "low": args.low, "high": args.high,
                  "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
