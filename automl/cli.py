"""The ``automl`` command. Parses arguments, calls one stage's public entry, prints the outcome.

Bad input (:class:`automl.errors.UserError`) is one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from automl.errors import UserError


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="HAM10000 folder: HAM10000_metadata.csv + images")
    parser.add_argument("--image-size", help="S or HEIGHTxWIDTH (default: the spec's data.image_size)")
    parser.add_argument("--split-file", help="CSV of image_id,split (e.g. dermamnist_split.csv) instead of the grouped split")
    parser.add_argument("--skip-bad-images", action="store_true", help="leave out missing or unreadable images")
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AUTOML_CACHE_DIR or ~/.cache/skin-automl)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one fixed configuration from a spec file")
    train.add_argument("spec", type=Path, help="spec file (YAML) with fixed hyperparameters")
    _data_args(train)
    train.add_argument("--epochs", type=int, help="maximum epochs (default: the spec's training.epochs)")
    train.add_argument("--seed", type=int, help="training seed (default: the spec's training.seed)")
    train.add_argument("--out", type=Path, help="output folder (default: results/train/SPEC_NAME)")
    train.set_defaults(run=_train)

    search = commands.add_parser("search", help="search a spec's space with Ray Tune (or KerasTuner)")
    search.add_argument("spec", type=Path, help="spec file (YAML) with search ranges and settings")
    _data_args(search)
    search.add_argument("--name", required=True, help="run name: results go to RESULTS/NAME")
    search.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    search.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    search.add_argument("--resume", action="store_true", help="continue an interrupted search of this name")
    settings = search.add_argument_group("search settings (override the spec's search section)")
    settings.add_argument("--engine", choices=("ray", "keras-tuner"))
    settings.add_argument("--searcher", choices=("random", "optuna"))
    settings.add_argument("--scheduler", choices=("asha", "none"))
    settings.add_argument("--keras-tuner", dest="keras_tuner", choices=("hyperband", "bayesian", "random"))
    settings.add_argument("--num-samples", type=int)
    settings.add_argument("--max-epochs", type=int)
    settings.add_argument("--grace-period", type=int)
    settings.add_argument("--reduction-factor", type=int)
    settings.add_argument("--metric")
    settings.add_argument("--mode", choices=("min", "max"))
    settings.add_argument("--max-concurrent", type=int)
    settings.add_argument("--cpus-per-trial", dest="cpu", type=float)
    settings.add_argument("--gpus-per-trial", dest="gpu", type=float)
    settings.add_argument("--time-budget", dest="time_budget_s", type=float, help="seconds")
    settings.add_argument("--max-failures", type=int)
    settings.add_argument("--seed", type=int, help="searcher seed")
    search.set_defaults(run=_search)
    return parser


def _train(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly
    from automl.spec import load_spec

    spec = load_spec(args.spec).with_overrides(
        image_size=args.image_size, split_file=args.split_file, epochs=args.epochs, seed=args.seed
    )
    spec.model_config()  # a bad spec fails here, before TensorFlow's 4 s import
    import_tensorflow_quietly()
    from automl.train import train_command

    train_command(
        spec,
        data_dir=args.data,
        out=args.out or Path("results") / "train" / spec.name,
        skip_bad_images=args.skip_bad_images,
        cache_dir=args.cache_dir,
    )


def _search(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly
    from automl.spec import SEARCH_OVERRIDES, load_spec

    overrides = {key: getattr(args, key) for key in SEARCH_OVERRIDES}
    spec = load_spec(args.spec).with_overrides(image_size=args.image_size, split_file=args.split_file, search=overrides)
    spec.space  # noqa: B018 - validates the space before the slow imports
    import_tensorflow_quietly()
    from automl.search import run_search

    run_search(spec, args.data, args.name, args.results, address=args.address, resume=args.resume,
               skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as exc:
        print(f"automl {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"automl {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
