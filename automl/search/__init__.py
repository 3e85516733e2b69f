"""``automl search``: a ranked, resumable hyperparameter search whose results land in the results store.

The Ray Tune engine (default) runs random or Optuna TPE search with ASHA pruning on embedded
local Ray, or on a cluster given its address; ``engine: keras-tuner`` runs the same space under
KerasTuner in this process. Either way the run folder holds the contract of :mod:`automl.store`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

from automl import console
from automl.data import Dataset, load_dataset
from automl.devices import keep_off_gpus, require_cluster_gpus
from automl.errors import UserError
from automl.files import atomic_write
from automl.layout import RunLayout
from automl.search._report import Report
from automl.remote import is_uri, join
from automl.search._warm import WarmStart, plan_warm_start, read_sources
from automl.spec import Spec, load_spec
from automl.store import RunStore, machine_info, utc_now, write_run_info
from automl.weights import require_weights

__all__ = ["check_shared_storage", "check_storage", "run_search", "start_ray"]


def run_search(
    spec: Spec,
    data_dir: Path,
    name: str,
    results_dir: Path = Path("results"),
    address: str | None = None,
    resume: bool = False,
    skip_bad_images: bool = False,
    cache_dir: Path | None = None,
    storage: str | None = None,
    trainable=None,
    results_label: str | None = None,
) -> Path:
    """Run (or resume) the search a spec describes; returns the run folder.

    ``storage`` (a shared path or a ``s3://``/``gs://`` URI) is where Ray Tune keeps trial
    checkpoints, which a multi-node cluster needs; the results store stays in ``results_dir``.
    ``trainable`` replaces the Ray engine's :class:`~automl.search._ray.CandidateTrainable` (a
    subclass, e.g. one that injects faults in tests or sleeps in benchmarks). ``results_label`` is how messages name
    the results folder when ``results_dir`` is the working copy of a URI (:mod:`automl.remote`).
    """
    run = RunLayout(Path(results_dir) / name)
    spec, storage = _starting_spec(run, spec, resume, storage)
    if spec.search.engine == "ray":
        keep_off_gpus()  # this driver trains nothing: its TensorFlow (weights, decoding) keeps off the trials' GPUs
    require_weights(spec)  # before anything is written: a backbone's ImageNet weights, fetched once or one line why not
    require_feasible(spec)  # and a space of which nothing can run at its image size is one line too
    # The runs and portfolio to start from, checked before anything is written; a resumed search has them already.
    sources = None if resume else read_sources(spec, Path(results_dir))
    settings, space = spec.search, spec.space
    dataset = load_dataset(data_dir, skip_bad_images=skip_bad_images, cache_dir=cache_dir, **spec.search_dataset_args())
    for note in dataset.notes:
        console.info(f"note: {note}")
    warm = plan_warm_start(spec, sources, dataset)
    storage = check_storage(storage)
    if settings.engine == "ray":
        from automl.search._ray import experiment_root

        start_ray(address)  # before anything is written: an unreachable cluster leaves no half-made run
        check_shared_storage(experiment_root(run.root, storage))
        require_cluster_gpus(settings.cpu, settings.gpu)  # and one whose TensorFlow cannot see its GPUs neither
    _record_start(run, spec, dataset, data_dir, resume, storage, warm)
    report = Report(spec.objective, settings.num_samples, [d.name for d in space.searched])
    store_args = {"run_dir": run.root, "objective": spec.objective, "max_epochs": settings.max_epochs}
    wall = time.monotonic()
    interrupted = False
    try:
        if settings.engine == "keras-tuner":
            from automl.search._keras_tuner import run_keras_tuner

            store = RunStore(**store_args)
            run_keras_tuner(dataset, spec, run.root, store, report, resume)
            store.close()
        else:
            interrupted = _run_ray(spec, dataset, run, store_args, report, resume, storage, trainable, warm)
    except KeyboardInterrupt:
        interrupted = True
    # wall_s adds up every sitting of a resumed search; started..ended would count the pause too.
    wall_s = run.read_info().get("wall_s", 0) + round(time.monotonic() - wall, 1)
    trials = run.read_trials() if run.trial_table.exists() else None
    info = write_run_info(run.root, status="interrupted" if interrupted else "finished", ended=utc_now(),
                          wall_s=wall_s, epochs_spent=run.epochs_trained())
    if trials is not None:
        report.leaderboard(trials)
    report.budget_lines(info)
    shown = join(results_label, name) if results_label else run.root
    console.out.print(f"results: {shown}  ({time.monotonic() - wall:.0f}s)")
    if interrupted:
        console.info(
            f"search interrupted; finished trials are kept. Resume with: automl search {spec.source or run.spec.name} "
            f"--data {data_dir} --name {name} --results {results_label or results_dir} --resume"
        )
    return run.root


def _starting_spec(run: RunLayout, spec: Spec, resume: bool, storage: str | None) -> tuple[Spec, str | None]:
    """The spec and storage to run: the given ones for a new search, the recorded ones to resume."""
    if resume:
        if not run.spec.is_file():
            raise UserError(f"{run.root}: no search to resume here (no {run.spec.name}); start it without --resume")
        # The space and settings the run started with.
        return load_spec(run.spec), run.read_info(required=True).get("storage")
    if run.info_file.is_file():
        raise UserError(
            f"{run.root}: a search named {run.name!r} already exists; pass --resume to continue it, or another --name"
        )
    if not spec.space.searched:
        raise UserError(f"{spec.source or 'spec'}: hyperparameters: nothing to search (every value is fixed); "
                        "use automl train")
    return spec, storage


def require_feasible(spec: Spec) -> None:
    """A :class:`UserError` naming the space when random draws cannot find one candidate that runs at its image size
    (:data:`~automl.search._feasible.MAX_REDRAWS` draws in a row rejected): before anything is written or started."""
    from automl.search._searchers import searcher
    from automl.spec import search_overrides

    probe = spec.with_overrides(search_overrides({"searcher": "random"}))
    searcher(probe, spec.search_image_size, None).suggest("probe")


def _record_start(run: RunLayout, spec: Spec, dataset: Dataset, data_dir: Path, resume: bool, storage,
                  warm: WarmStart | None) -> None:
    """Write the resolved spec and ``run.json``'s start record, and say what is about to run."""
    from automl.trial import EPOCH_DEFINITION  # imports TensorFlow: not at module import

    settings, space = spec.search, spec.space
    run.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write(run.spec, spec.to_yaml())
        # Draws the searcher rejects as infeasible, which take no trial: the searcher updates it as it draws. What
        # an epoch was, and what the search was warm-started with, as it started.
        write_run_info(run.root, infeasible_draws={"rejected": 0, "by_reason": {}}, epoch_definition=EPOCH_DEFINITION,
                       warm_start=warm.record if warm is not None else None)
    write_run_info(
        run.root, name=run.name, status="running", engine=settings.engine, searcher=settings.searcher,
        scheduler=settings.scheduler if settings.engine == "ray" else settings.keras_tuner,
        **spec.objective.to_record(), num_samples=settings.num_samples,
        max_epochs=settings.max_epochs, time_budget_s=settings.time_budget_s, epoch_budget=settings.epoch_budget,
        started=run.read_info().get("started") or utc_now(), ended=None,
        data_dir=str(data_dir), data_fingerprint=dataset.fingerprint, split=dataset.split_protocol,
        split_fingerprint=dataset.split_fingerprint, task=dataset.task, image_size=list(dataset.image_size),
        hyperparameters=[d.name for d in space.searched], machine=machine_info(), storage=storage,
    )
    engine = (settings.engine if settings.engine == "keras-tuner"
              else f"ray ({settings.searcher} + {settings.scheduler})")
    console.info(
        f"{'resuming' if resume else 'starting'} search {run.name}: {engine}, {settings.num_samples} trials of up to "
        f"{settings.max_epochs} epochs, {len(space.searched)} hyperparameters searched, objective {spec.objective}; "
        f"{len(dataset.table)} images at {dataset.image_size[0]}x{dataset.image_size[1]}, "
        f"split {dataset.split_protocol}"
    )
    if warm is not None:
        console.info(warm.line())


def start_ray(address: str | None) -> None:
    """Embedded local Ray, or a connection to the cluster at ``address``."""
    # Our own lines and leaderboard replace Tune's console output and its checkpoint-frequency warning.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own per-trial logs (result.json, progress.csv, TensorBoard events), which the driver writes for every
    # result of every trial, record what the results store records: off, unless the environment says otherwise.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"--ray-address {address}: cannot connect to the Ray cluster: "
                            f"{str(exc).splitlines()[0]}") from None
    else:
        # Embedded local Ray; its dashboard stays off (nothing listens beyond Ray's own token-protected ports).
        # address="local": a new instance even when `ray start` left a cluster (or its address file) behind.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=True)
    # A failed trial is one line of ours (with the path of its traceback), not Tune's full traceback.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # Without its per-trial logs, Tune's result grid says for each trial that it found none.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if threading.current_thread() is threading.main_thread():
        # `automl jobs stop` (and any supervisor) sends SIGTERM, on which Ray's handler dumps a stack and
        # dies; as Ctrl-C instead, Tune stops gracefully and the run is marked interrupted, resumable.
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


def check_shared_storage(root: str) -> None:
    """Refuse, before any trial starts, a local folder for Tune's experiment that some node of the cluster cannot see.

    Ray itself checks this in each trial (it writes a marker file from the driver and looks for it from the trial's
    worker, "Unable to set up cluster storage"), so without shared storage a search fails trial by trial. This is the
    same check, made once up front on every live node other than the driver's own: a zero-CPU task pinned to the
    node reads a marker file the driver wrote. A URI is visible from everywhere its credentials are.
    """
    if is_uri(root):
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [node for node in ray.nodes() if node.get("Alive") and node["NodeID"] != here]
    if not others:
        return
    nonce = uuid.uuid4().hex
    marker = Path(root) / f".storage-check-{nonce}"
    atomic_write(marker, nonce)
    sees = ray.remote(num_cpus=0)(_holds)
    try:
        checks = {f"node {node['NodeID'][:8]} at {node['NodeManagerAddress']}": sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(marker), nonce)
            for node in others}
        try:
            blind = [node for node, check in checks.items() if not ray.get(check, timeout=STORAGE_CHECK_S)]
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"{root}: could not check within {STORAGE_CHECK_S} s that every node of the cluster sees "
                            "this folder; check the cluster (automl jobs, ray status)") from None
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(f"{root}: not shared with every node of the cluster ({', '.join(blind)} cannot see it), so "
                        "trials there could not save checkpoints; pass --results s3://BUCKET/PREFIX (or --storage "
                        "with a folder every node mounts at this same path)")


#: Seconds the shared-storage check waits for the nodes' answers (a cold worker process takes a few).
STORAGE_CHECK_S = 120


def _holds(path: str, content: str) -> bool:
    try:
        return Path(path).read_text() == content
    except OSError:
        return False


def ray_on_this_machine() -> bool:
    """Whether every node of the connected Ray cluster runs on this machine (embedded local Ray, or ``ray start``
    nodes beside it): their workers can then open this machine's files, the decode cache among them."""
    import ray

    here = ray.util.get_node_ip_address()
    return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node.get("Alive"))


def check_storage(storage: str | None) -> str | None:
    """A shared folder (made absolute) or a URI pyarrow can open (``s3://``, ``gs://``, ...), checked up front."""
    if not storage:
        return None
    if "://" not in storage:
        return str(Path(storage).expanduser().resolve())
    from pyarrow import fs

    from automl.remote import with_endpoint

    storage = with_endpoint(storage)
    try:
        fs.FileSystem.from_uri(storage)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types (no credentials, unknown scheme)
        raise UserError(f"--storage {storage}: cannot open it ({str(exc).splitlines()[0]}); "
                        "check the URI and credentials") from None
    return storage


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at HOST:PORT (Ray itself retries for long)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379) "
                        "or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the cluster "
            "(ray start --head) or check the address"
        ) from None


def _run_ray(spec: Spec, dataset: Dataset, run: RunLayout, store_args: dict, report: Report, resume: bool,
             storage: str | None, trainable, warm: WarmStart | None) -> bool:
    """Run the Ray Tune engine on the Ray started by :func:`start_ray`; True if it stopped early."""
    import ray

    from automl.search._ray import StoreCallback, build_tuner, restore_tuner

    settings = spec.search
    # Tune reads its experiment snapshot period from the environment as the Tuner starts.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = ("auto" if settings.snapshot_period_s is None
                                              else str(settings.snapshot_period_s))
    started = time.monotonic()
    try:
        if resume:
            tuner = restore_tuner(dataset, spec, run.root, storage, trainable)
        else:
            callback = StoreCallback(store_args, spec.space, report)
            tuner = build_tuner(dataset, spec, run.root, [callback], storage, trainable, warm)
        tuner.fit()
    finally:
        ray.shutdown()
    store = RunStore(**store_args)
    try:
        out_of_time = settings.time_budget_s is not None and time.monotonic() - started >= settings.time_budget_s
        if out_of_time or settings.budget_spent(run.epochs_trained()):  # opening the store wrote the engine's out
            # A budget ended the search: trials cut short count as pruned, and the run is finished.
            for trial_id, row in list(store.trials.items()):
                if row.get("status") == "running":
                    store.trial_finished(trial_id, "pruned")
            return False
        still_running = any(row.get("status") == "running" for row in store.trials.values())
        return still_running or store.finished_count() < settings.num_samples
    finally:
        store.close()  # an interrupted sitting too ends with the parts compacted
