"""Infeasible draws: how many random draws of a space cannot run at an image size, why, and what a search spends.

    python benchmarks/infeasible_draws.py                 # 200 draws of ham10000_cnn.yaml at 28 px (seconds)
    python benchmarks/infeasible_draws.py --search 8      # and a real 8-trial search of it (a few minutes)

The draws are random search's own (:class:`automl.search._searchers.FeasibleRandomSearch`, seeded), each checked
as the searchers check them on the driver (:meth:`automl.space.SearchSpace.infeasible`: pure Python, no model
built). With ``--search N`` a real ``automl search`` of the space (random search, N trials of one epoch, one at a
time, on ``--data``; a finished one of the same spec is reused) shows what the rejected draws cost: the trials it
ran, how many of them were infeasible (none: they take no trial slot) and the draws it rejected, from its
``run.json``. Prints a table and writes
``OUT/infeasible_draws.json``; the search goes to ``OUT/runs/infeasible-draws/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, DEFAULT_OUT, REPO, RUNS, check_idle, print_table, run_search_process, write_result

from automl.layout import RunLayout, hyperparameter_columns, hyperparameter_name
from automl.search._feasible import Rejections, reason
from automl.search._searchers import FeasibleRandomSearch
from automl.spec import load_spec, search_overrides


def draw(space_file: Path, image_size: int, draws: int, seed: int) -> dict:
    """``draws`` random draws of the space, each checked at ``image_size``: counts and an example per reason."""
    spec = load_spec(space_file)
    size = (image_size, image_size)
    sampler = FeasibleRandomSearch(spec.space, Rejections(spec.space, size, str(space_file)), seed,
                                   metric=spec.objective.name, mode=spec.objective.direction)
    started = time.perf_counter()
    by_reason: dict[str, int] = {}
    examples: dict[str, str] = {}
    for _ in range(draws):
        error = spec.space.infeasible(sampler._sample(), size)
        if error is not None:
            by_reason[reason(error)] = by_reason.get(reason(error), 0) + 1
            examples.setdefault(reason(error), str(error))
    seconds = time.perf_counter() - started
    return {"space": str(space_file.relative_to(REPO)) if space_file.is_relative_to(REPO) else str(space_file),
            "image_size": list(size), "draws": draws, "seed": seed, "rejected": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())), "examples": examples,
            "check_ms_per_draw": round(1000 * seconds / draws, 3)}


def search(space_file: Path, image_size: int, trials: int, data_dir: Path, out: Path, seed: int) -> dict:
    """A real random search of ``trials`` one-epoch trials: trials run, trials infeasible, draws rejected."""
    spec = load_spec(space_file).with_overrides({"data.image_size": image_size} | search_overrides(
        {"searcher": "random", "scheduler": "none", "num_samples": trials, "max_epochs": 1, "grace_period": 1,
         "max_concurrent": 1, "seed": seed}))
    run = RunLayout(out / RUNS / "infeasible-draws")
    done = (run.read_info().get("status") == "finished" and run.spec.is_file()
            and run.spec.read_text() == spec.to_yaml() and run.read_info().get("data_dir") == str(data_dir))
    if not done:  # a finished search of this spec is reused
        outcome = run_search_process(spec, data_dir, run.root)
        if outcome.returncode != 0:
            raise SystemExit(f"the search failed: see {run.root / 'search.log'}")
    table, info = run.read_trials(), run.read_info()
    # Each trial's hyperparameters checked again as the searcher checks a draw: a trial spent on one that cannot run.
    columns = hyperparameter_columns(table)
    infeasible = [spec.space.infeasible({hyperparameter_name(c): row[c] for c in columns if row[c] == row[c]},
                                        spec.data.image_size) is not None for row in table.to_dict("records")]
    where = str(run.root.relative_to(REPO)) if run.root.is_relative_to(REPO) else str(run.root)
    return {"run": where, "trials": len(table), "statuses": table["status"].value_counts().to_dict(),
            "trials_infeasible": sum(infeasible), "draws_rejected": info["infeasible_draws"],
            "epochs_spent": info.get("epochs_spent"), "wall_s": info.get("wall_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "automl" / "search_spaces" / "ham10000_cnn.yaml")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search", type=int, default=0, metavar="N", help="also run a real search of N trials")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = draw(args.space.resolve(), args.image_size, args.draws, args.seed)
    rows = [(why, n, f"{n / args.draws:.0%}", result["examples"][why]) for why, n in result["by_reason"].items()]
    rows.append(("total", result["rejected"], f"{result['rejected'] / args.draws:.0%}", ""))
    print_table(f"{args.draws} random draws of {result['space']} at {args.image_size} px: rejected, by reason",
                ["reason", "draws", "share", "example"], rows,
                caption=f"checked in {result['check_ms_per_draw']} ms per draw, no model built")
    if args.search:
        check_idle()
        result["search"] = search(args.space.resolve(), args.image_size, args.search, args.data, args.out, args.seed)
        found = result["search"]
        print_table(f"a real random search of {result['space']} at {args.image_size} px",
                    ["trials", "infeasible trials", "draws rejected (no trial)", "by reason", "epochs", "wall s"],
                    [(found["trials"], found["trials_infeasible"], found["draws_rejected"]["rejected"],
                      found["draws_rejected"]["by_reason"], found["epochs_spent"], found["wall_s"])])
    write_result(args.out / "infeasible_draws.json", result)
    print(f"wrote {args.out / 'infeasible_draws.json'}")


if __name__ == "__main__":
    main()
