"""The ``automl`` command. Parses arguments, calls one stage's public entry, prints the outcome.

Bad input (:class:`automl.errors.UserError`) is one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from automl import __version__
from automl.errors import UserError
from automl.stages import DECISION, DECISIONS, ENSEMBLE_METHOD, ENSEMBLE_METHODS


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="FOLDER",
                        help="HAM10000 folder: HAM10000_metadata.csv + images")
    _image_args(parser)


def _image_args(parser: argparse.ArgumentParser) -> None:
    """How the images are read: every command that decodes a data folder takes these."""
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out missing or unreadable images (default: stop at the first, naming it)")
    parser.add_argument("--cache-dir", type=Path, metavar="FOLDER",
                        help="decoded-image cache (default: $AUTOML_CACHE_DIR or ~/.cache/skin-automl)")


#: The metavars of spec settings whose type alone would not say what they take.
SETTING_METAVARS = {"data.image_size": "SIZE", "search.image_size": "SIZE", "data.split.file": "CSV",
                    "search.resources.cpu": "CPUS", "search.resources.gpu": "GPUS", "search.time_budget_s": "SECONDS",
                    "search.snapshot_period_s": "SECONDS", "search.warm_start": "RUN", "search.portfolio": "FILE"}
#: Spec settings whose flag was renamed in 0.2.0: the old spelling, accepted for one release with a note on stderr.
OLD_SETTING_FLAGS = {"search.seed": "--seed"}


def _setting_args(parser: argparse.ArgumentParser, *groups: str) -> None:
    """The spec settings these commands can override, as declared in :data:`automl.spec.SETTINGS`."""
    from automl.spec import settings_with_flags

    titled = parser.add_argument_group("spec settings (each overrides the spec's value for this command)")
    for setting in settings_with_flags(*groups):
        default = _spec_default_text(setting.default)
        text = f"{setting.help} [{setting.key}; default: the spec's value{f', else {default}' if default else ''}]"
        if setting.type is bool:
            titled.add_argument(setting.flag, dest=setting.dest, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
            continue
        kind = setting.type if setting.type in (int, float) else str
        metavar = None if setting.choices else SETTING_METAVARS.get(setting.key, {int: "N", float: "NUMBER"}.get(kind))
        titled.add_argument(setting.flag, dest=setting.dest, type=kind, choices=setting.choices, nargs=setting.nargs,
                            metavar=metavar, help=text)
        if setting.key in OLD_SETTING_FLAGS:
            titled.add_argument(OLD_SETTING_FLAGS[setting.key], dest=setting.dest, type=kind, action=_OldSpelling,
                                new=setting.flag)


def _spec_default_text(value) -> str:
    """A setting's built-in default as a reader would write it (``28x28``, ``on``), or '' when it has none."""
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)


def _boolean(text: str) -> bool | None:
    """A boolean's value as YAML would read it (true/false, yes/no, on/off, 1/0), or None if it is none of these."""
    values = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    return values.get(text.lower())


def _old_boolean_values(argv: list[str]) -> list[str]:
    """``--tpe-constant-liar false``, the 0.1 spelling (boolean settings took a value), as ``--no-tpe-constant-liar``,
    with a note on stderr: accepted for one release."""
    from automl.spec import SETTINGS

    switches = {s.flag for s in SETTINGS.values() if s.flag and s.type is bool}
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in switches and i + 1 < len(argv) and _boolean(argv[i + 1]) is not None:
            flag = argv[i] if _boolean(argv[i + 1]) else "--no-" + argv[i][2:]
            print(f"automl: {argv[i]} {argv[i + 1]} is now {flag} (the old spelling goes in the next release)",
                  file=sys.stderr)
            out.append(flag)
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _overrides(args: argparse.Namespace, *groups: str) -> dict:
    from automl.spec import settings_with_flags

    return {s.key: getattr(args, s.dest) for s in settings_with_flags(*groups) if hasattr(args, s.dest)}


#: The setting groups each command offers as flags (submit handles the split file itself: it may upload it).
TRAIN_GROUPS = ("data", "objective", "device", "train")
SEARCH_GROUPS = ("data", "objective", "device", "search")
RUN_GROUPS = (*SEARCH_GROUPS, "retrain")
SUBMIT_GROUPS = RUN_GROUPS
DECISION_HELP = ("balanced: members' probabilities as trained (favours balanced accuracy); prior: Bayes-corrected "
                 f"to the training class prior (favours accuracy) (default: {DECISION})")
METHOD_HELP = ("how the members are weighed, on validation probabilities: greedy (Caruana's selection with "
               f"replacement), mean (equal weights) or weighted (fitted weights) (default: {ENSEMBLE_METHOD})")
SPLIT_FILE_DEST = "data__split__file"
SPEC_HELP = "a YAML file, or the name of a shipped spec (quick, ham10000_cnn, ...: automl/search_spaces/)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train_parser, _check_parser, _search_parser, _retrain_parser, _ensemble_parser, _export_parser,
                _predict_parser, _evaluate_parser, _run_parser, _dashboard_parser, _serve_parser, _submit_parser,
                _jobs_parser):
        add(commands)
    for listed in commands._choices_actions:  # each command's --help opens with what it does, as the list says
        commands.choices[listed.dest].description = commands.choices[listed.dest].description or listed.help
    return parser


def _train_parser(commands) -> None:
    train = commands.add_parser("train", help="train one fixed configuration from a spec file")
    train.add_argument("spec", help=f"spec with fixed hyperparameters: {SPEC_HELP}")
    _data_args(train)
    _setting_args(train, *TRAIN_GROUPS)
    train.add_argument("--out", type=Path, metavar="FOLDER", help="output folder (default: results/train/SPEC_NAME)")
    train.add_argument("--overwrite", action="store_true", help="replace --out even if automl did not write it")
    train.set_defaults(run=_train)


def _check_parser(commands) -> None:
    check = commands.add_parser("check", help="describe a spec's search space without training: dimensions, "
                                              "conditions, feasible draws, parameter range, seconds per epoch")
    check.add_argument("spec", help=f"search spec: {SPEC_HELP}")
    check.add_argument("--image-size", dest="data__image_size", metavar="SIZE",
                       help="S or HEIGHTxWIDTH to check at (default: the size the spec's search trains at)")
    check.add_argument("--draws", type=int, default=CHECK_DRAWS, metavar="N",
                       help=f"random draws to count the feasible share over (default: {CHECK_DRAWS})")
    check.add_argument("--no-timing", dest="timing", action="store_false",
                       help="skip the measured seconds per epoch (which builds and trains two small models)")
    check.set_defaults(run=_check)


#: Draws ``automl check`` counts the feasible share over: pure Python, about a millisecond each.
CHECK_DRAWS = 1000


def _run_folder_args(parser: argparse.ArgumentParser, search: bool) -> None:
    """Where a run lives, and for the commands that search, where its cluster and checkpoints are."""
    _results_arg(parser)
    if search:
        _ray_address_arg(parser)
        parser.add_argument("--storage", metavar="FOLDER_OR_URI",
                            help="where Tune keeps the trials' checkpoints: a folder every node mounts, or a URI "
                                 "(default: the run folder, in the bucket when --results is a URI)")


RESULTS_HELP = ("results folder, or a URI pyarrow opens (s3://bucket/prefix, gs://...; endpoint and credentials from "
                "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or the URI's ?endpoint_override=...) (default: results)")


def _results_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", metavar="FOLDER_OR_URI", help=RESULTS_HELP)


class _OldSpelling(argparse.Action):
    """A flag's old spelling: still accepted for one release, with one line on stderr naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"automl: {option_string} is now {self.new} here (the old spelling goes in the next release)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def _ray_address_arg(parser: argparse.ArgumentParser) -> None:
    """The Ray cluster a command's trials run on (GCS ``HOST:PORT`` or ``auto``): ``--ray-address``, so that
    ``--address`` means one thing only, the Jobs API URL of ``submit`` and ``jobs`` (as in ``ray job submit``)."""
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="Ray cluster to run on: its head's HOST:PORT, or auto on a cluster node "
                             "(default: embedded local Ray)")
    parser.add_argument("--address", dest="ray_address", action=_OldSpelling, new="--ray-address")


def _search_parser(commands) -> None:
    search = commands.add_parser("search", help="search a spec's space with Ray Tune (or KerasTuner)")
    search.add_argument("spec", help=f"spec with search ranges and settings: {SPEC_HELP}")
    _data_args(search)
    search.add_argument("--name", required=True, help="run name: results go to RESULTS/NAME")
    _run_folder_args(search, search=True)
    search.add_argument("--resume", action="store_true", help="continue an interrupted search of this name")
    _setting_args(search, *SEARCH_GROUPS)
    search.set_defaults(run=_search)


def _stage_parser(commands, command: str, text: str) -> argparse.ArgumentParser:
    """A command that works on an existing run: ``automl COMMAND NAME [--results DIR]``."""
    parser = commands.add_parser(command, help=text)
    parser.add_argument("name", help="run name (the folder RESULTS/NAME that automl search or run wrote)")
    _results_arg(parser)
    return parser


def _retrain_parser(commands) -> None:
    from automl.spec import SETTINGS

    retrain = _stage_parser(commands, "retrain", "retrain a search's top configurations from scratch (Ray Tune)")
    retrain.add_argument("--data", type=Path, metavar="FOLDER",
                         help="HAM10000 folder (default: the one the search used)")
    for key in ("retrain.top_k", "retrain.seeds"):
        setting = SETTINGS[key]
        retrain.add_argument(setting.flag, type=int, metavar="N",
                             help=f"{setting.help} [{key}; default: the run spec's value, else {setting.default}]")
    retrain.add_argument("--epochs", type=int, metavar="N",
                         help="maximum epochs per member; early stopping may end one sooner "
                              "[training.epochs; default: the run spec's value]")
    retrain.add_argument("--refit", action="store_true",
                         help="train the ensemble's members again on train+val, each for its best epoch count, into "
                              "RESULTS/NAME/refit/, and add their test figures to the ensemble report")
    _ray_address_arg(retrain)
    _image_args(retrain)
    retrain.set_defaults(run=_retrain)


def _ensemble_parser(commands) -> None:
    ensemble = _stage_parser(commands, "ensemble", "ensemble the retrained members and evaluate on the test split")
    _ensemble_args(ensemble)
    ensemble.set_defaults(run=_ensemble)


def _ensemble_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=ENSEMBLE_METHODS, default=ENSEMBLE_METHOD, help=METHOD_HELP)
    parser.add_argument("--decision", choices=DECISIONS, default=DECISION, help=DECISION_HELP)


def _export_parser(commands) -> None:
    export = _stage_parser(commands, "export", "export a run's ensemble as a self-contained model folder")
    export.add_argument("--out", metavar="FOLDER_OR_URI",
                        help="model folder to write, or a URI (default: RESULTS/NAME/model, where automl run puts it)")
    export.add_argument("--overwrite", action="store_true", help="replace --out even if automl did not write it")
    export.add_argument("--refit", action="store_true",
                        help="export the members refit on train+val (automl retrain --refit), with the ensemble's "
                             "weights, TTA, temperature and decision")
    export.set_defaults(run=_export)


def _predict_parser(commands) -> None:
    predict = commands.add_parser("predict", help="classify image files with an exported model")
    predict.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by automl export (or its URI: s3://...)")
    predict.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files or folders")
    predict.add_argument("--out", type=Path, default=Path("preds.csv"), metavar="CSV",
                         help="CSV to write (default: preds.csv)")
    predict.add_argument("--batch-size", type=int, default=64, metavar="N",
                         help="images per forward pass; lower it if memory is short (default: 64)")
    predict.set_defaults(run=_predict)


def _evaluate_parser(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="measure an exported model on a labelled image folder "
                                                    "(metrics with intervals, report; never chooses anything)")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by automl export (or its URI: s3://...)")
    evaluate.add_argument("--data", required=True, type=Path, metavar="FOLDER",
                          help="labelled folder: images, and labels.csv or HAM10000_metadata.csv (image_id,dx)")
    evaluate.add_argument("--labels", type=Path, metavar="CSV",
                          help="labels CSV with image_id and dx columns (default: in --data)")
    evaluate.add_argument("--name", help="evaluation name (default: the data folder's name)")
    evaluate.add_argument("--out", metavar="FOLDER_OR_URI", help="output folder (default: MODEL_DIR/evaluations/NAME)")
    evaluate.set_defaults(run=_evaluate)


def _run_parser(commands) -> None:
    run = commands.add_parser("run", help="search, retrain the best, ensemble them (judged on the test split) and "
                                          "export the model, in one command")
    run.add_argument("spec", help=f"search spec: {SPEC_HELP}")
    _data_args(run)
    run.add_argument("--name", required=True,
                     help="run name: results go to RESULTS/NAME, the model to RESULTS/NAME/model")
    _run_folder_args(run, search=True)
    run.add_argument("--resume", action="store_true",
                     help="continue this run: resume an interrupted search, or skip a finished one and go on")
    _ensemble_args(run)
    _setting_args(run, *RUN_GROUPS)
    run.set_defaults(run=_run)


def _dashboard_parser(commands) -> None:
    dashboard = commands.add_parser("dashboard",
                                    help="read-only web view of the results store; refreshes while searches run")
    _results_arg(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--port", type=int, default=8050, help="port to listen on (default: 8050)")
    dashboard.set_defaults(run=_dashboard)


def _serve_parser(commands) -> None:
    from automl.serve import DEFAULT_HOST, DEFAULT_PORT, ServeSettings

    default = ServeSettings()
    serve = commands.add_parser("serve", help="serve an exported model over HTTP with Ray Serve (POST /predict)")
    serve.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by automl export (or its URI: s3://...)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help="address to bind (default %(default)s: this machine only; any other needs --token-file)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help="HTTP port of Serve's proxy (default %(default)s)")
    serve.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding a bearer token every request but GET /healthz must send "
                            "(Authorization: Bearer TOKEN); required when --host is not loopback (default: no token)")
    _ray_address_arg(serve)
    limits = serve.add_argument_group("requests and scaling")
    units = {"max_upload_mb": "MIB", "batch_wait_ms": "MS", "replica_cpus": "CPUS", "request_timeout_s": "SECONDS"}
    for flag, kind, dest, text in (
            ("--max-upload-mb", float, "max_upload_mb", "largest request body in MiB (413 above it)"),
            ("--max-images", int, "max_images", "most images in one multipart request (413 above it)"),
            ("--max-batch-size", int, "max_batch_size",
             "most images classified in one model call, gathered across requests"),
            ("--batch-wait-ms", float, "batch_wait_ms", "how long a batch waits for more requests before it runs"),
            ("--replicas", int, "replicas",
             "model replicas (each loads the model; its TensorFlow uses every core it gets)"),
            ("--max-replicas", int, "max_replicas",
             "above --replicas: autoscale between the two on ongoing requests per replica (0: fixed)"),
            ("--target-ongoing-requests", int, "target_ongoing_requests",
             "ongoing requests per replica autoscaling aims at (with --max-replicas)"),
            ("--max-ongoing-requests", int, "max_ongoing_requests",
             "requests one replica takes at once; more wait in Serve's queue"),
            ("--replica-cpus", float, "replica_cpus", "CPUs Ray reserves for each replica"),
            ("--request-timeout", float, "request_timeout_s", "seconds before Serve's proxy gives up on a request")):
        limits.add_argument(flag, type=kind, dest=dest, default=getattr(default, dest), metavar=units.get(dest, "N"),
                            help=f"{text} (default %(default)s)")
    serve.set_defaults(run=_serve)


#: run's flags that submit passes on to the job as they are (beyond the spec settings): (flag, dest, is a switch).
SUBMIT_FORWARDS = (("--method", "method", False), ("--decision", "decision", False),
                   ("--skip-bad-images", "skip_bad_images", True), ("--cache-dir", "cache_dir", False),
                   ("--storage", "storage", False), ("--resume", "resume", True))


def _submit_parser(commands) -> None:
    submit = commands.add_parser("submit", help="run a search (or the whole pipeline) as a job on a Ray cluster")
    submit.add_argument("spec", help=f"search spec, sent with the job: {SPEC_HELP}")
    submit.add_argument("--data", required=True, metavar="FOLDER",
                        help="HAM10000 folder on the cluster (the data is never uploaded)")
    submit.add_argument("--skip-bad-images", action="store_true",
                        help="leave out missing or unreadable images (default: stop at the first, naming it)")
    submit.add_argument("--cache-dir", metavar="FOLDER",
                        help="decoded-image cache on the cluster (default: the nodes' $AUTOML_CACHE_DIR or "
                             "~/.cache/skin-automl)")
    submit.add_argument("--name", required=True, help="run name")
    submit.add_argument("--results", required=True, metavar="URI_OR_FOLDER",
                        help="where the job writes the run: a URI (s3://bucket/prefix: read it from anywhere "
                             "afterwards) or an absolute folder on the cluster's head node")
    submit.add_argument("--storage", metavar="FOLDER_OR_URI",
                        help="shared folder or s3:// / gs:// URI for Tune's checkpoints (needed with several nodes)")
    submit.add_argument("--search-only", action="store_true", help="run automl search, not the whole automl run")
    submit.add_argument("--resume", action="store_true",
                        help="continue the run of this name (e.g. after automl jobs stop)")
    submit.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit 2 if it fails")
    _ensemble_args(submit)
    _cluster_args(submit)
    _setting_args(submit, *SUBMIT_GROUPS)
    for action in submit._actions:  # a local split file is sent with the job
        if action.dest == SPLIT_FILE_DEST:
            action.help = "split CSV: a local file is sent with the job, otherwise a path on the cluster"
    submit.set_defaults(run=_submit)


def _jobs_parser(commands) -> None:
    jobs = commands.add_parser("jobs", help="list, follow and stop jobs on a Ray cluster")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    for action, text in (("list", "jobs on the cluster, newest first"), ("status", "one job's status"),
                         ("logs", "one job's log"), ("stop", "stop a job")):
        sub = jobs_commands.add_parser(action, help=text)
        if action != "list":
            sub.add_argument("job_id", metavar="JOB_ID", help="the id automl submit printed (automl-NAME-...)")
        if action == "logs":
            sub.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        _cluster_args(sub)
        sub.set_defaults(run=_jobs)


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"), metavar="URL",
                        help="the cluster's Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--token",
                        help="the cluster's auth token "
                             "(default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")


def _train(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly
    from automl.files import check_output_dir
    from automl.spec import load_spec

    spec = load_spec(args.spec).with_overrides(_overrides(args, *TRAIN_GROUPS))
    spec.model_config()  # a bad spec fails here, before TensorFlow's 4 s import
    out = args.out or Path("results") / "train" / spec.name
    check_output_dir(out, overwrite=args.overwrite)  # and an --out we may not replace, before any training
    import_tensorflow_quietly()
    from automl.train import train_command

    train_command(spec, data_dir=args.data, out=out, skip_bad_images=args.skip_bad_images,
                  cache_dir=args.cache_dir, overwrite=args.overwrite)


def _check(args: argparse.Namespace) -> None:
    from automl.search._feasible import check_space
    from automl.spec import load_spec, parse_image_size

    spec = load_spec(args.spec)
    size = parse_image_size(args.data__image_size, "--image-size") if args.data__image_size else spec.search_image_size
    if args.draws < 1:
        raise UserError(f"--draws {args.draws}: give 1 or more")
    for line in check_space(spec, size, draws=args.draws, timing=args.timing):
        print(line)


def _search_spec(args: argparse.Namespace, groups: tuple[str, ...] = SEARCH_GROUPS):
    """The spec file with the command line's overrides applied (spec and space validated)."""
    from automl.spec import load_spec

    return load_spec(args.spec).with_overrides(_overrides(args, *groups))


@contextlib.contextmanager
def _run_folder(args: argparse.Namespace):
    """The run folder, held by this process alone (taken before TensorFlow's 4 s import), as a RunLayout."""
    from automl.layout import RunLayout
    from automl.lock import run_lock

    from automl.remote import Location, checked_out, is_uri

    if is_uri(args.results):  # a working copy, mirrored to the URI; Tune's experiment goes there directly
        location = Location.parse(args.results, "--results")
        if getattr(args, "storage", "") is None:
            args.storage = location.uri
        with checked_out(location.join(args.name), args.command_line) as local:
            yield RunLayout(local)
        print(f"run folder: {location.join(args.name).display} (working copy {local})")
        return
    run = RunLayout(Path(args.results) / args.name)
    with run_lock(run.lock, args.command_line):
        yield run


def _search(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    spec = _search_spec(args)
    with _run_folder(args) as run:
        import_tensorflow_quietly()
        from automl.search import run_search

        run_search(spec, args.data, run.name, run.root.parent, address=args.ray_address, resume=args.resume,
                   skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir, storage=args.storage,
                   results_label=args.results)


def _run_data_dir(args: argparse.Namespace, run) -> Path:
    if getattr(args, "data", None):
        return args.data
    recorded = run.read_info(required=True).get("data_dir")
    if not recorded:
        raise UserError(f"{run.info_file}: no data folder recorded; pass --data")
    return Path(recorded)


def _retrain(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    if args.refit:
        given = [flag for flag, value in (("--top-k", args.top_k), ("--seeds", args.seeds), ("--epochs", args.epochs))
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: --refit retrains the ensemble's members for their own best epochs; "
                            f"drop {'them' if len(given) > 1 else 'it'}")
    with _run_folder(args) as run:
        data_dir = _run_data_dir(args, run)
        summary = run.read_ensemble() if args.refit else {}  # a run without an ensemble fails before the import
        import_tensorflow_quietly()
        from automl.ensemble import evaluate_run
        from automl.retrain import refit, retrain

        if not args.refit:
            retrain(run.root, data_dir, top_k=args.top_k, seeds=args.seeds, epochs=args.epochs,
                    address=args.ray_address, skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir)
            return
        refit(run.root, data_dir, address=args.ray_address, skip_bad_images=args.skip_bad_images,
              cache_dir=args.cache_dir)
        # The same choices again (all made on validation, deterministically), now with the refit's test figures.
        evaluate_run(run.root, method=summary["method"], decision=summary.get("decision", DECISION))


def _ensemble(args: argparse.Namespace) -> None:
    with _run_folder(args) as run:
        from automl.ensemble import evaluate_run

        evaluate_run(run.root, method=args.method, decision=args.decision)


def _export(args: argparse.Namespace) -> None:
    import tempfile

    from automl.console import import_tensorflow_quietly
    from automl.files import check_output_dir
    from automl.remote import Location, check_remote_output, is_uri, push_folder

    location = Location.parse(args.out, "--out") if is_uri(args.out) else None
    if location:
        check_remote_output(location, overwrite=args.overwrite)
    elif args.out is not None:
        check_output_dir(Path(args.out), overwrite=args.overwrite)
    with _run_folder(args) as run, tempfile.TemporaryDirectory() as scratch:
        run.read_ensemble()  # a run without an ensemble fails here, before TensorFlow's import
        local_out = Path(scratch) / "model" if location else Path(args.out) if args.out else run.model.root
        check_output_dir(local_out, overwrite=args.overwrite)
        import_tensorflow_quietly()
        from automl.export import export_run

        out = export_run(run.root, local_out, overwrite=args.overwrite, refit=args.refit)
        if location:
            check_remote_output(location, overwrite=args.overwrite)  # again: the export took a while
            push_folder(out, location)
            out = location.display
    print(f"exported {out}{' (refit on train+val)' if args.refit else ''}: model.keras, saved_model/, "
          "model_card.json, model_card.md")


def _model_folder(text: str) -> Path:
    """A model folder given as a local path or as a URI (then pulled into a local copy, without its evaluations)."""
    from automl.remote import Location, is_uri, pulled

    if not is_uri(text):
        return Path(text)
    return pulled(Location.parse(text, "MODEL_DIR"), "model", lambda relative: relative.startswith("evaluations/"))


def _predict(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly

    model_dir = _model_folder(args.model_dir)
    import_tensorflow_quietly()
    from automl.predict import predict_files

    predict_files(model_dir, args.inputs, args.out, batch_size=args.batch_size)


def _evaluate(args: argparse.Namespace) -> None:
    from automl.console import import_tensorflow_quietly
    from automl.layout import ModelLayout
    from automl.remote import Location, is_uri, push_folder, working_copy

    model_dir = _model_folder(args.model_dir)
    # Written to a URI (--out's, or the model's own evaluations/): made in a local copy first, then copied there.
    location = Location.parse(args.out, "--out") if is_uri(args.out) else None
    out = working_copy(location, "evaluation") if location else args.out
    import_tensorflow_quietly()
    from automl.evaluate import evaluate_model

    results = evaluate_model(model_dir, args.data, out=out, name=args.name, labels=args.labels)
    if location is None and args.out is None and is_uri(args.model_dir):
        out = ModelLayout(model_dir).evaluation(results["name"]).root
        model = Location.parse(args.model_dir, "MODEL_DIR")
        location = model.join("evaluations", results["name"])
        for card in (ModelLayout(model_dir).card_json, ModelLayout(model_dir).card_md):  # the card names it now
            model.upload(card, card.name)
    if location:
        push_folder(Path(out), location)
        print(f"evaluation: {location.display}")


def _run(args: argparse.Namespace) -> None:
    from automl.api import run_stages

    spec = _search_spec(args, RUN_GROUPS)
    with _run_folder(args) as run:
        out = run_stages(spec, args.data, run, method=args.method, decision=args.decision, resume=args.resume,
                         ray_address=args.ray_address, storage=args.storage, skip_bad_images=args.skip_bad_images,
                         cache_dir=args.cache_dir, results_label=args.results, command=args.command_line)
    if out is not None:
        print(f"done: report {run.report}, model {out}")


def _dashboard(args: argparse.Namespace) -> None:
    from automl.dashboard import REFRESH_S, serve
    from automl.remote import Location, is_uri, kept_pulled

    if is_uri(args.results):  # a local view of the URI, pulled again as often as the pages refresh
        location = Location.parse(args.results, "--results")
        serve(kept_pulled(location, REFRESH_S), host=args.host, port=args.port, shown=location.display)
        return
    serve(args.results, host=args.host, port=args.port)


def _serve(args: argparse.Namespace) -> None:
    from automl.predict import model_classes
    from automl.remote import is_uri
    from automl.serve import ServeSettings, read_token, serve_forever

    settings = ServeSettings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ServeSettings)})
    settings.check()
    token = read_token(args.token_file, args.host)
    model_dir = _model_folder(args.model_dir)
    model_classes(model_dir)  # not a model folder: one line here, before Ray starts
    # On a cluster a replica may run on another node: it pulls a URI itself; a local folder must be on every node.
    served = args.model_dir if args.ray_address and is_uri(args.model_dir) else str(model_dir)
    serve_forever(served, settings, args.host, args.port, token, args.ray_address)


def _submit(args: argparse.Namespace) -> None:
    spec = _search_spec(args, SUBMIT_GROUPS)  # a bad spec fails here, on the laptop, not on the cluster
    from automl.remote import Location, is_uri

    if is_uri(args.results):
        Location.parse(args.results, "--results")  # a URI pyarrow cannot open fails here, not on the cluster
    elif not Path(args.results).is_absolute():
        raise UserError(f"--results {args.results}: give an absolute path on the cluster "
                        "(the job's own folder is temporary)")
    command, files = job_command(args, spec)
    jobs = _connect(args)
    job_id = jobs.submit(command, files, args.name)
    print(f"submitted {job_id} to {jobs.url}: {' '.join(command)}")
    print(f"follow it with: automl jobs logs {job_id} --follow --address {jobs.url}")
    if args.wait:
        _follow(jobs, job_id)


def job_command(args: argparse.Namespace, spec) -> tuple[list[str], dict[str, Path]]:
    """The ``automl run`` (or ``search``) command a submitted job runs, with every setting given to ``submit``,
    and the local files sent with it (the spec; a local split file and the spec's portfolio, named in the job's
    folder)."""
    from automl.search._warm import NO_PORTFOLIO, find_portfolio
    from automl.spec import SETTINGS, find_spec, settings_with_flags

    command = ["python", "-m", "automl", "search" if args.search_only else "run", "spec.yaml", "--data", args.data,
               "--name", args.name, "--results", args.results, "--ray-address", "auto"]
    files = {"spec.yaml": find_spec(args.spec)}  # a shipped spec's name sends the shipped file
    sent = {SPLIT_FILE_DEST}  # settings passed on below by their file's name in the job's folder
    split_file = getattr(args, SPLIT_FILE_DEST)
    if split_file and Path(split_file).is_file():
        files["split.csv"], split_file = Path(split_file), "split.csv"  # sent with the job
    if split_file:
        command += ["--split-file", str(split_file)]
    if spec.search.portfolio != NO_PORTFOLIO:
        with contextlib.suppress(UserError):  # not here: a path on the cluster, passed on as it is
            files["portfolio.yaml"] = find_portfolio(spec.search.portfolio, spec.source)
            command += ["--portfolio", "portfolio.yaml"]  # next to spec.yaml in the job's folder
            sent.add(SETTINGS["search.portfolio"].dest)
    after_search = [f for f, dest, _ in SUBMIT_FORWARDS if dest in ("method", "decision")]
    after_search += [s.flag for s in settings_with_flags("retrain")]
    if args.search_only:
        given = [s.flag for s in settings_with_flags("retrain") if getattr(args, s.dest) is not None]
        given += [flag for flag, dest, _ in SUBMIT_FORWARDS if flag in after_search and getattr(args, dest) not in
                  (None, ENSEMBLE_METHOD, DECISION)]
        if given:
            raise UserError(f"{', '.join(given)}: settings of the stages after the search; drop them or --search-only")
    for flag, dest, switch in SUBMIT_FORWARDS:
        value = getattr(args, dest)
        if args.search_only and flag in after_search:
            continue
        if switch and value:
            command.append(flag)
        elif not switch and value is not None:
            command += [flag, str(value)]
    for setting in settings_with_flags(*SUBMIT_GROUPS):
        value = getattr(args, setting.dest)
        if value is None or setting.dest in sent or (args.search_only and setting.group == "retrain"):
            continue
        if setting.type is bool:
            command.append(setting.flag if value else f"--no-{setting.flag[2:]}")
        else:
            command += [setting.flag, *map(str, value if setting.nargs else [value])]
    return command, files


def _jobs(args: argparse.Namespace) -> None:
    from automl.jobs import check_job_id, status_line

    if args.jobs_command != "list":
        check_job_id(args.job_id)  # before contacting the cluster
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
        raise UserError("--address: give the cluster's Jobs API (e.g. http://127.0.0.1:8265) "
                        "or set RAY_API_SERVER_ADDRESS")
    return Jobs(args.address, args.token)


def _follow(jobs, job_id: str) -> None:
    from automl.jobs import status_line

    for text in jobs.follow(job_id):
        print(text, end="", flush=True)
    job = jobs.info(job_id)
    print(status_line(job))
    if getattr(job.status, "value", job.status) != "SUCCEEDED":
        raise UserError(f"job {job_id} {getattr(job.status, 'value', job.status).lower()}: "
                        f"{job.message or 'see its log above'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_old_boolean_values(argv))
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
