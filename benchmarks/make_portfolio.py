"""The shipped portfolio: diverse good configurations of a space, chosen by validation scores of a run on another split.

    python benchmarks/make_portfolio.py   # automl/search_spaces/portfolios/ham10000_cnn.yaml (a second; no training)

Optuna searches of ``automl/search_spaces/ham10000_cnn.yaml`` train these configurations first (``search.portfolio``;
:mod:`automl.search._warm`). How they are chosen:

- from a run on another split than the benchmark's: ``results/reference-official-split`` searched the same space
  (40 trials, Optuna + ASHA) on the official DermaMNIST split (a split file, image-level), not on the lesion-grouped
  seed-0 split that ``ham10000_cnn.yaml`` and the benchmarks use, so a search seeded with the portfolio has not
  chosen anything by the benchmark split's validation or test images;
- by the run's validation objective only (each trial's best ``val_balanced_accuracy``), never by a test score;
- diverse: best first, at most one configuration per (``conv_blocks``, ``convs_per_block``, ``imbalance``). A
  search's good trials crowd around one region (that run converged on two blocks with pool 3, oversampling), and
  near-copies of one configuration would spend the start-up trials on one point;
- each must fit the space and run at its image size, as a warm start checks them (one that does not is passed
  over); ``--top`` of them (5: the TPE start-up trials of a search of up to 29 trials, and most of the 8 of a
  40-trial one, leaving TPE random draws of its own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO

from automl.errors import SpecError
from automl.files import atomic_write
from automl.layout import RunLayout, best_column, hyperparameter_columns, hyperparameter_name
from automl.objective import Objective
from automl.spec import load_spec
from automl.store import FINISHED

DIVERSE_BY = ("conv_blocks", "convs_per_block", "imbalance")


def choose(run: RunLayout, space_file: Path, top: int) -> tuple[list[dict], list[dict]]:
    """The chosen configurations, and for each where it came from (trial, status, epochs, its best score)."""
    spec = load_spec(space_file)
    info, trials = run.read_info(required=True), run.read_trials()
    objective = Objective.from_record(info)
    column = best_column(objective.name)
    trials = objective.sort(trials[trials["status"].isin(FINISHED) & trials[column].notna()], column)
    chosen, notes, kinds = [], [], set()
    for row in trials.to_dict("records"):
        try:
            configuration = spec.space.configuration(
                {hyperparameter_name(c): row[c] for c in hyperparameter_columns(trials)})
        except SpecError:
            continue
        kind = tuple(configuration.get(name) for name in DIVERSE_BY)
        if kind in kinds or spec.space.infeasible(configuration, spec.data.image_size) is not None:
            continue
        kinds.add(kind)
        chosen.append(configuration)
        notes.append({"trial": row["trial_id"], "status": row["status"], "epochs": int(row["epochs"]),
                      column: round(float(row[column]), 4)})
        if len(chosen) == top:
            break
    return chosen, notes


def where(path: Path) -> str:
    """A path as the repository names it."""
    return path.resolve().relative_to(REPO).as_posix()


def portfolio_text(run: RunLayout, space_file: Path, chosen: list[dict], notes: list[dict]) -> str:
    info = run.read_info(required=True)
    header = [
        "# Written by benchmarks/make_portfolio.py; run it again rather than edit this file.",
        f"# {len(chosen)} configurations of {where(space_file)}, chosen from {where(run.root)}",
        f"# ({info.get('num_samples')} trials; split: {info.get('split')}),",
        "# a run on another split than the benchmark's lesion-grouped one, by each trial's best validation score",
        f"# only: best first, at most one per ({', '.join(DIVERSE_BY)}). Optuna searches of the",
        "# space train them first (search.portfolio; --portfolio none to start without them).",
    ]
    description = (f"diverse good configurations of {where(space_file)}: the best trials of {where(run.root)} by "
                   f"{best_column(Objective.from_record(info).name)}, one per ({', '.join(DIVERSE_BY)})")
    body = [yaml.safe_dump({"description": description}, sort_keys=False, width=1000).rstrip(), "configurations:"]
    for i, (configuration, note) in enumerate(zip(chosen, notes, strict=True), 1):
        said = ", ".join(f"{k} {v}" for k, v in note.items())
        body.append(f"# {i}. {said}")
        body.append(yaml.safe_dump([configuration], sort_keys=False, width=1000).rstrip())
    return "\n".join(header + body) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "results" / "reference-official-split")
    parser.add_argument("--space", type=Path, default=REPO / "automl" / "search_spaces" / "ham10000_cnn.yaml")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--out", type=Path,
                        default=REPO / "automl" / "search_spaces" / "portfolios" / "ham10000_cnn.yaml")
    args = parser.parse_args()
    run = RunLayout(args.run)
    chosen, notes = choose(run, args.space, args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, portfolio_text(run, args.space, chosen, notes))
    for note in notes:
        print(note)
    print(f"wrote {args.out}: {len(chosen)} configurations")


if __name__ == "__main__":
    main()
