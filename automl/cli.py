"""The ``automl`` command. Parses arguments, calls one stage's public entry, prints the outcome.

Bad input (:class:`automl.errors.UserError`) is one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from automl.errors import UserError


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="HAM10000 folder: HAM10000_metadata.csv + images")
    parser.add_argument("--image-size", help="S or HEIGHTxWIDTH (default: the spec's data.image_size)")
    parser.add_argument("--split-file", help="CSV of image_id,split (e.g. dermamnist_split.csv) instead of the grouped split")
    parser.add_argument("--skip-bad-images", action="store_true", help="leave out missing or unreadable images")
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AUTOML_CACHE_DIR or ~/.cache/skin-automl)")


#: Search-setting overrides by destination, as their command-line flag: submit passes them on to the cluster.
SEARCH_FLAGS: dict[str, str] = {}


def _search_settings_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search settings (override the spec's search section)")

    def add(*flags, **kwargs) -> None:
        SEARCH_FLAGS[group.add_argument(*flags, **kwargs).dest] = flags[0]

    add("--engine", choices=("ray", "keras-tuner"))
    add("--searcher", choices=("random", "optuna"))
    add("--scheduler", choices=("asha", "none"))
    add("--keras-tuner", dest="keras_tuner", choices=("hyperband", "bayesian", "random"))
    add("--num-samples", type=int)
    add("--max-epochs", type=int)
    add("--grace-period", type=int)
    add("--reduction-factor", type=int)
    add("--metric")
    add("--mode", choices=("min", "max"))
    add("--max-concurrent", type=int)
    add("--cpus-per-trial", dest="cpu", type=float)
    add("--gpus-per-trial", dest="gpu", type=float)
    add("--time-budget", dest="time_budget_s", type=float, help="seconds")
    add("--max-failures", type=int)
    add("--seed", type=int, help="searcher seed")


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
    search.add_argument("--storage", help="shared folder or s3:// / gs:// URI for Tune's checkpoints (multi-node clusters)")
    _search_settings_args(search)
    search.set_defaults(run=_search)

    retrain = commands.add_parser("retrain", help="retrain a search's top configurations from scratch (Ray Tune)")
    retrain.add_argument("name", help="search run name")
    retrain.add_argument("--results", type=Path, default=Path("results"))
    retrain.add_argument("--data", type=Path, help="HAM10000 folder (default: the one the search used)")
    retrain.add_argument("--top-k", type=int, default=5, help="configurations to retrain (default 5)")
    retrain.add_argument("--seeds", type=int, default=1, help="seeds per configuration (default 1)")
    retrain.add_argument("--epochs", type=int, help="epoch budget (default: the spec's training.epochs)")
    retrain.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    retrain.add_argument("--skip-bad-images", action="store_true")
    retrain.add_argument("--cache-dir", type=Path)
    retrain.set_defaults(run=_retrain)

    ensemble = commands.add_parser("ensemble", help="ensemble the retrained members and evaluate on the test split")
    ensemble.add_argument("name", help="search run name")
    ensemble.add_argument("--results", type=Path, default=Path("results"))
    ensemble.add_argument("--method", choices=("greedy", "mean", "weighted"), default="greedy")
    ensemble.set_defaults(run=_ensemble)

    export = commands.add_parser("export", help="export a run's ensemble as a self-contained model folder")
    export.add_argument("name", help="search run name")
    export.add_argument("--results", type=Path, default=Path("results"))
    export.add_argument("--out", type=Path, required=True, help="model folder to write")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", help="classify image files with an exported model")
    predict.add_argument("model_dir", type=Path, help="folder written by automl export")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", type=Path, default=Path("preds.csv"), help="CSV to write (default preds.csv)")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.set_defaults(run=_predict)

    run = commands.add_parser("run", help="search, retrain, ensemble, evaluate and export in one command")
    run.add_argument("spec", type=Path, help="search spec (YAML)")
    _data_args(run)
    run.add_argument("--name", required=True, help="run name: results go to RESULTS/NAME")
    run.add_argument("--results", type=Path, default=Path("results"))
    run.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    run.add_argument("--resume", action="store_true",
                     help="continue this run: resume an interrupted search, or skip a finished one and go on")
    run.add_argument("--storage", help="shared folder or s3:// / gs:// URI for Tune's checkpoints (multi-node clusters)")
    run.add_argument("--top-k", type=int, default=5)
    run.add_argument("--seeds", type=int, default=1)
    run.add_argument("--method", choices=("greedy", "mean", "weighted"), default="greedy")
    _search_settings_args(run)
    run.set_defaults(run=_run)

    dashboard = commands.add_parser("dashboard", help="read-only web view of the results store; refreshes while searches run")
    dashboard.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--port", type=int, default=8050)
    dashboard.set_defaults(run=_dashboard)

    submit = commands.add_parser("submit", help="run a search (or the whole pipeline) as a job on a Ray cluster")
    submit.add_argument("spec", type=Path, help="search spec (YAML), sent with the job")
    submit.add_argument("--data", required=True, help="HAM10000 folder on the cluster (the data is never uploaded)")
    submit.add_argument("--name", required=True, help="run name")
    submit.add_argument("--results", required=True, help="results folder on the cluster's head node (absolute; shared if you want it elsewhere)")
    submit.add_argument("--storage", help="shared folder or s3:// / gs:// URI for Tune's checkpoints (needed with several nodes)")
    submit.add_argument("--split-file", help="split CSV: a local file is sent with the job, otherwise a path on the cluster")
    submit.add_argument("--search-only", action="store_true", help="run automl search, not the whole automl run")
    submit.add_argument("--resume", action="store_true", help="continue the run of this name (e.g. after automl jobs stop)")
    submit.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit 2 if it fails")
    _cluster_args(submit)
    _search_settings_args(submit)
    submit.set_defaults(run=_submit)

    jobs = commands.add_parser("jobs", help="list, follow and stop jobs on a Ray cluster")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    for action, text in (("list", "jobs on the cluster, newest first"), ("status", "one job's status"),
                         ("logs", "one job's log"), ("stop", "stop a job")):
        sub = jobs_commands.add_parser(action, help=text)
        if action != "list":
            sub.add_argument("job_id")
        if action == "logs":
            sub.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        _cluster_args(sub)
        sub.set_defaults(run=_jobs)
    return parser


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the cluster's Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--token", help="the cluster's auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")


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


def _search_spec(args: argparse.Namespace):
    """The spec file with the command line's data and search-settings overrides applied."""
    from automl.spec import SEARCH_OVERRIDES, load_spec

    overrides = {key: getattr(args, key) for key in SEARCH_OVERRIDES}
    return load_spec(args.spec).with_overrides(image_size=getattr(args, "image_size", None), split_file=args.split_file,
                                               search=overrides)


def _search(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    spec = _search_spec(args)
    spec.space  # noqa: B018 - validates the space before the slow imports
    import_tensorflow_quietly()
    from automl.search import run_search

    run_search(spec, args.data, args.name, args.results, address=args.address, resume=args.resume,
               skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir, storage=args.storage)


def _run_data_dir(args: argparse.Namespace) -> Path:
    from automl.errors import UserError
    from automl.store import read_run_info

    if getattr(args, "data", None):
        return args.data
    recorded = read_run_info(args.results / args.name).get("data_dir")
    if not recorded:
        raise UserError(f"{args.results / args.name}: no search run here; check --results and the name, or pass --data")
    return Path(recorded)


def _retrain(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.retrain import retrain

    retrain(args.results / args.name, _run_data_dir(args), top_k=args.top_k, seeds=args.seeds, epochs=args.epochs,
            address=args.address, skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir)


def _ensemble(args: argparse.Namespace) -> None:
    from automl.evaluate import evaluate_run

    evaluate_run(args.results / args.name, method=args.method)


def _export(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.export import export_run

    out = export_run(args.results / args.name, args.out)
    print(f"exported {out}: model.keras, saved_model/, model_card.json, model_card.md")


def _predict(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.predict import predict_files

    predict_files(args.model_dir, args.inputs, args.out, batch_size=args.batch_size)


def _run(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    spec = _search_spec(args)
    spec.space  # noqa: B018 - validates the space before the slow imports
    import_tensorflow_quietly()
    from automl.evaluate import evaluate_run
    from automl.export import export_run
    from automl.retrain import retrain
    from automl.search import run_search
    from automl.store import read_run_info, write_run_info

    run_dir = args.results / args.name
    if args.resume and read_run_info(run_dir).get("status") == "finished":
        print(f"search {args.name} already finished; going on to retrain")
    else:
        run_search(spec, args.data, args.name, args.results, address=args.address, resume=args.resume,
                   skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir, storage=args.storage)
        if read_run_info(run_dir).get("status") != "finished":
            return  # interrupted: run_search said how to resume
    write_run_info(run_dir, command=args.command_line)
    retrain(run_dir, args.data, top_k=args.top_k, seeds=args.seeds, address=args.address,
            skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir)
    evaluate_run(run_dir, method=args.method)
    out = export_run(run_dir, run_dir / "model")
    print(f"done: report {run_dir / 'ensemble' / 'report.md'}, model {out}")


def _dashboard(args: argparse.Namespace) -> None:
    from automl.dashboard import serve

    serve(args.results, host=args.host, port=args.port)


def _submit(args: argparse.Namespace) -> None:
    from automl.spec import SEARCH_OVERRIDES

    spec = _search_spec(args)  # a bad spec fails here, on the laptop, not on the cluster
    spec.space  # noqa: B018
    if not Path(args.results).is_absolute():
        raise UserError(f"--results {args.results}: give an absolute path on the cluster (the job's own folder is temporary)")
    jobs = _connect(args)
    command = ["python", "-m", "automl", "search" if args.search_only else "run", "spec.yaml", "--data", args.data,
               "--name", args.name, "--results", args.results, "--address", "auto"]
    for flag, value in (("--storage", args.storage), ("--split-file", args.split_file)):
        if value:
            command += [flag, value]
    if args.resume:
        command.append("--resume")
    files = {"spec.yaml": args.spec}
    if args.split_file and Path(args.split_file).is_file():
        files["split.csv"], command[command.index("--split-file") + 1] = Path(args.split_file), "split.csv"
    for key in SEARCH_OVERRIDES:
        value = getattr(args, key)
        if value is not None:
            command += [SEARCH_FLAGS[key], str(value)]
    job_id = jobs.submit(command, files, args.name)
    print(f"submitted {job_id} to {jobs.url}: {' '.join(command)}")
    print(f"follow it with: automl jobs logs {job_id} --follow --address {jobs.url}")
    if args.wait:
        _follow(jobs, job_id)


def _jobs(args: argparse.Namespace) -> None:
    from automl.jobs import status_line

    jobs = _connect(args)
    if args.jobs_command == "list":
        found = jobs.list()
        for job in found:
            print(status_line(job))
        if not found:
            print(f"no jobs on {jobs.url}")
    elif args.jobs_command == "status":
        print(status_line(jobs.info(args.job_id)))
    elif args.jobs_command == "logs":
        if args.follow:
            _follow(jobs, args.job_id)
        else:
            print(jobs.logs(args.job_id), end="")
    elif args.jobs_command == "stop":
        stopped = jobs.stop(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'already ended'}")


def _connect(args: argparse.Namespace):
    from automl.jobs import Jobs

    if not args.address:
        raise UserError("--address: give the cluster's Jobs API (e.g. http://127.0.0.1:8265) or set RAY_API_SERVER_ADDRESS")
    return Jobs(args.address, args.token)


def _follow(jobs, job_id: str) -> None:
    from automl.jobs import status_line

    for text in jobs.follow(job_id):
        print(text, end="", flush=True)
    job = jobs.info(job_id)
    print(status_line(job))
    if getattr(job.status, "value", job.status) != "SUCCEEDED":
        raise UserError(f"job {job_id} {getattr(job.status, 'value', job.status).lower()}: {job.message or 'see its log above'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["automl", *argv])
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
