"""``automl search``: a ranked, resumable hyperparameter search whose results land in the results store.

The Ray Tune engine (default) runs random or Optuna TPE search with ASHA pruning on embedded
local Ray, or on a cluster given its address; ``engine: keras-tuner`` runs the same space under
KerasTuner in this process. Either way the run folder holds the contract of :mod:`automl.store`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from automl import console
from automl.data import load_dataset
from automl.errors import UserError
from automl.files import atomic_write
from automl.search._report import Report
from automl.spec import Spec, load_spec
from automl.store import (
    RUN_FILE,
    SPEC_FILE,
    RunStore,
    machine_info,
    read_run_info,
    read_trials,
    utc_now,
    write_run_info,
)

__all__ = ["check_storage", "run_search", "start_ray"]


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
) -> Path:
    """Run (or resume) the search a spec describes; returns the run folder.

    ``storage`` (a shared path or a ``s3://``/``gs://`` URI) is where Ray Tune keeps trial
    checkpoints, which a multi-node cluster needs; the results store stays in ``results_dir``.
    """
    run_dir = Path(results_dir) / name
    if resume:
        if not (run_dir / SPEC_FILE).is_file():
            raise UserError(f"{run_dir}: no search to resume here (no {SPEC_FILE}); start it without --resume")
        spec = load_spec(run_dir / SPEC_FILE)  # the space and settings the run started with
        storage = read_run_info(run_dir).get("storage")
    elif (run_dir / RUN_FILE).is_file():
        raise UserError(
            f"{run_dir}: a search named {name!r} already exists; pass --resume to continue it, or another --name"
        )
    settings, space = spec.search, spec.space
    if not space.searched:
        raise UserError(f"{spec.source or 'spec'}: hyperparameters: nothing to search (every value is fixed); use automl train")

    dataset = load_dataset(data_dir, skip_bad_images=skip_bad_images, cache_dir=cache_dir, **spec.data.dataset_args())
    for note in dataset.notes:
        console.info(f"note: {note}")
    storage = check_storage(storage)
    if settings.engine == "ray":
        start_ray(address)  # before anything is written: an unreachable cluster leaves no half-made run
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write(run_dir / SPEC_FILE, spec.to_yaml())
    started = read_run_info(run_dir).get("started") or utc_now()
    write_run_info(
        run_dir, name=name, status="running", engine=settings.engine, searcher=settings.searcher,
        scheduler=settings.scheduler if settings.engine == "ray" else settings.keras_tuner,
        metric=settings.metric, mode=settings.mode, num_samples=settings.num_samples,
        max_epochs=settings.max_epochs, started=started, ended=None, data_dir=str(data_dir),
        data_fingerprint=dataset.fingerprint, split=dataset.split_protocol, task=dataset.task,
        image_size=list(dataset.image_size), hyperparameters=[d.name for d in space.searched], machine=machine_info(),
        storage=storage,
    )
    engine = settings.engine if settings.engine == "keras-tuner" else f"ray ({settings.searcher} + {settings.scheduler})"
    console.info(
        f"{'resuming' if resume else 'starting'} search {name}: {engine}, {settings.num_samples} trials of up to "
        f"{settings.max_epochs} epochs, {len(space.searched)} hyperparameters searched, metric {settings.metric}; "
        f"{len(dataset.table)} images at {dataset.image_size[0]}x{dataset.image_size[1]}, split {dataset.split_protocol}"
    )
    report = Report(settings.metric, settings.num_samples, [d.name for d in space.searched])
    store_args = {"run_dir": run_dir, "metric": settings.metric, "mode": settings.mode, "max_epochs": settings.max_epochs}
    wall = time.monotonic()
    interrupted = False
    try:
        if settings.engine == "keras-tuner":
            from automl.search._keras_tuner import run_keras_tuner

            store = RunStore(**store_args)
            run_keras_tuner(dataset, space, settings, run_dir, store, report, resume)
            store.flush(force=True)
        else:
            interrupted = _run_ray(spec, dataset, space, run_dir, name, store_args, report, resume, storage)
    except KeyboardInterrupt:
        interrupted = True
    status = "interrupted" if interrupted else "finished"
    # wall_s adds up every sitting of a resumed search; started..ended would count the pause too.
    wall_s = read_run_info(run_dir).get("wall_s", 0) + round(time.monotonic() - wall, 1)
    write_run_info(run_dir, status=status, ended=utc_now(), wall_s=wall_s)
    trials = read_trials(run_dir) if (run_dir / "trials.parquet").is_file() else None
    if trials is not None:
        report.leaderboard(trials, settings.mode)
    console.out.print(f"results: {run_dir}  ({time.monotonic() - wall:.0f}s)")
    if interrupted:
        console.info(
            f"search interrupted; finished trials are kept. Resume with: automl search {spec.source or SPEC_FILE} "
            f"--data {data_dir} --name {name} --results {results_dir} --resume"
        )
    return run_dir


def start_ray(address: str | None) -> None:
    """Embedded local Ray, or a connection to the cluster at ``address``."""
    import os

    # Our own lines and leaderboard replace Tune's console output and its checkpoint-frequency warning.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"--address {address}: cannot connect to the Ray cluster: {str(exc).splitlines()[0]}") from None
    else:
        # Embedded local Ray; its dashboard stays off (nothing listens beyond Ray's own token-protected ports).
        # address="local": a new instance even when `ray start` left a cluster (or its address file) behind.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    # A failed trial is one line of ours (with the path of its traceback), not Tune's full traceback.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    if threading.current_thread() is threading.main_thread():
        # `automl jobs stop` (and any supervisor) sends SIGTERM, on which Ray's handler dumps a stack and
        # dies; as Ctrl-C instead, Tune stops gracefully and the run is marked interrupted, resumable.
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


def check_storage(storage: str | None) -> str | None:
    """A shared folder (made absolute) or a URI pyarrow can open (``s3://``, ``gs://``, ...), checked up front."""
    if not storage:
        return None
    if "://" not in storage:
        return str(Path(storage).expanduser().resolve())
    from pyarrow import fs

    try:
        fs.FileSystem.from_uri(storage)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types (no credentials, unknown scheme)
        raise UserError(f"--storage {storage}: cannot open it ({str(exc).splitlines()[0]}); check the URI and credentials") from None
    return storage


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at HOST:PORT (Ray itself retries for long)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"--address {address}: nothing answers there ({exc.strerror or exc}); start the cluster "
            "(ray start --head) or check the address"
        ) from None


def _run_ray(spec, dataset, space, run_dir, name, store_args, report, resume, storage) -> bool:
    """Run the Ray Tune engine on the Ray started by :func:`start_ray`; True if it stopped early."""
    import ray

    from automl.search._ray import StoreCallback, build_tuner, restore_tuner

    settings = spec.search
    started = time.monotonic()
    try:
        if resume:
            tuner = restore_tuner(dataset, space, settings, run_dir, storage)
        else:
            callback = StoreCallback(store_args, space, report)
            tuner = build_tuner(dataset, space, settings, run_dir, name, [callback], storage)
        tuner.fit()
    finally:
        ray.shutdown()
    if settings.time_budget_s is not None and time.monotonic() - started >= settings.time_budget_s:
        # The budget ended the search: trials cut short count as pruned, and the run is finished.
        store = RunStore(**store_args)
        for trial_id, row in store.trials.items():
            if row.get("status") == "running":
                store.trial_finished(trial_id, "pruned")
        return False
    trials = read_trials(run_dir) if (run_dir / "trials.parquet").is_file() else None
    finished = 0 if trials is None else int(trials["status"].isin(["completed", "pruned", "errored"]).sum())
    still_running = trials is not None and (trials["status"] == "running").any()
    return bool(still_running or finished < settings.num_samples)
