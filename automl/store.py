"""The results store: what a search leaves on disk, and the contract for everything that reads it.

One folder per run, ``RESULTS/NAME/``:

``spec.yaml``
    the resolved spec the run used (settings after command-line overrides).
``run.json``
    engine, searcher, scheduler, metric and mode, status (``running``, ``finished``,
    ``interrupted``), start and end times, the data fingerprint and split, the machine, the budgets
    (``time_budget_s``, ``epoch_budget``) and ``epochs_spent`` (rows of ``epochs.parquet``),
    ``infeasible_draws`` (``rejected``, ``by_reason``: draws the searcher rejected without a trial),
    ``epoch_definition`` (:data:`automl.trial.EPOCH_DEFINITION`; absent from runs before it: 1) and ``warm_start``
    (:mod:`automl.search._warm`: the runs and portfolio it started from, the results ``told`` to Optuna without
    training, which are not trials of this run, the configurations ``enqueued`` and those ``skipped``, by reason;
    null without one); later stages add theirs (``retrain``: start, end, members; ``command``: the ``automl run``
    line).
``trials.parquet``
    one row per trial: ``trial_id``, ``status`` (``running|completed|pruned|errored``; pruned =
    stopped before ``max_epochs`` by ASHA, Hyperband or the time budget),
    ``epochs``, every hyperparameter as ``hp_NAME`` (missing when its condition did not hold),
    ``best_epoch``, ``best_val_*`` (at the epoch best by the run's metric), ``last_val_*``,
    ``wall_time_s`` (seconds since the trial started, at its last epoch), ``started_at`` (Unix time),
    ``hostname``, ``node_ip``, ``error``; ``retries`` and ``restored_from_epoch`` when a failed trial was
    resumed from its checkpoint. What the trial cost, when its engine reports it (runs recorded before lack
    these): ``parameters`` (the model's parameter count), ``seconds_per_epoch`` (the median over its epochs
    of each epoch's ``epoch_s``, or, where an epoch did not report one, the difference of ``elapsed_s`` from
    the epoch before: the first epoch's then counts model building too) and ``samples_seen`` (training
    samples trained on, at its last epoch).
``epochs.parquet``
    one row per trial and epoch: ``trial_id``, ``epoch``, ``loss``, ``accuracy``, every
    ``val_*`` metric, ``learning_rate``, ``elapsed_s`` since the trial started, ``timestamp``
    (Unix time the epoch was recorded: best-so-far versus wall time is read from it), ``node_id``
    (the Ray node that ran it; ``trials.parquet`` keeps the last one); ``epoch_s`` (the seconds the
    epoch took) and ``samples_seen`` (so far) when the engine reports them.

How it is written, so that a report costs the same in a run of 100 trials as in one of 10,000: the store keeps
each trial's row (and the epochs of trials still running) in memory and updates the row's ``best_*`` and ``last_*``
as each epoch arrives. Every ``flush_every_s`` seconds (2 s), or sooner once ``flush_rows`` epoch rows (2,000) wait,
it hands the new epoch rows and the trial rows that changed to its writer thread, which appends them as one part
each to ``epochs-parts/`` and ``trials-parts/`` (atomically: temporary file, fsync, rename; a new table's first
batch is its base file). Every 8 parts of one size are merged into one, so a table has a few dozen parts at most
and each row is rewritten once per level, a logarithmic number of times. At the end of a search (or of a sitting,
when it is interrupted) the parts are compacted into ``trials.parquet`` and ``epochs.parquet``, which then hold
the whole tables again. Readers use :meth:`automl.layout.RunLayout.read_trials` and ``read_epochs``, which put the
base file and the parts together (:class:`automl.layout.PartedTable`): they never see a torn file or a row twice,
and never lose a row an earlier read returned. The two tables are written one after the other, so one of them may
be a batch ahead of the other. A driver killed outright loses what it recorded since its last flush: at most
``flush_every_s`` seconds of epochs and status changes, plus a batch being written (the engine flushes on every
step of Tune's loop, and on resume takes the outcome of trials Tune had recorded as finished from Tune's state).
Paths and readers are :class:`automl.layout.RunLayout`'s; readers never import Ray.
"""

from __future__ import annotations

import datetime as dt
import math
import queue
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from automl.files import atomic_write, write_json
from automl.layout import (
    EPOCH_SECONDS, IMAGE_SIZE, PARAMETERS, PARTS_THROUGH, SAMPLES_SEEN, SECONDS_PER_EPOCH, WALL_TIME, Part, PartedTable,
    RunLayout, best_column, concat_tables, hp_column, last_column, latest, read_parquet,
)
from automl.objective import METRICS, Objective

EPOCH_COLUMNS = ("loss", "accuracy", *METRICS, "learning_rate")
STATUSES = ("running", "completed", "pruned", "errored")
FINISHED = ("completed", "pruned", "errored")
#: Defaults: how long a recorded row may wait in memory, and how many epoch rows may wait, before a flush.
FLUSH_EVERY_S, FLUSH_ROWS = 2.0, 2000
#: Parts of one size merged into one part: a table holds at most (MERGE_FANOUT - 1) parts per size.
MERGE_FANOUT = 8
#: Batches handed to the writer thread that may wait for it.
QUEUED = 4
#: The store writing each run folder in this process, by its absolute path.
_OPEN: dict[str, RunStore] = {}


class RunStore:
    """Collects trial and epoch records of one run and writes them out in batches, atomically.

    Existing files are loaded first, so a resumed run keeps every finished trial. ``flush`` hands what changed to
    the store's writer thread when ``flush_every_s`` has passed since the last batch or ``flush_rows`` epoch rows
    wait, so the engine's loop never waits on the disk; ``flush(force=True)`` writes now and waits for it; ``close``
    writes the rest and compacts the parts into the two Parquet files. One store writes a run folder at a time in a
    process: opening one closes the one opened before on the same folder.
    """

    def __init__(self, run_dir: Path, objective: Objective, max_epochs: int, flush_every_s: float = FLUSH_EVERY_S,
                 flush_rows: int = FLUSH_ROWS):
        self.layout = RunLayout(run_dir)
        self.objective, self.max_epochs = objective, max_epochs
        self.flush_every_s, self.flush_rows = flush_every_s, flush_rows
        self.trials: dict[str, dict[str, Any]] = {}  # every trial's row; change them through the methods only
        self._open: dict[str, dict[int, dict[str, Any]]] = {}  # epochs of trials still running, by epoch
        self._pending: dict[tuple[str, int], dict[str, Any]] = {}  # epoch rows not written yet
        self._dirty: dict[str, None] = {}  # trials changed since the last flush, in order
        self._finished = 0
        self._best: tuple[float, str] | None = None  # the run's best value and its trial
        self._last_flush = 0.0  # the first record is written at once: a new run shows up early
        key = str(self.layout.root.resolve())
        if (previous := _OPEN.get(key)) is not None:
            previous.close()  # e.g. the engine's own store, when a search ended without telling it
        _OPEN[key] = self
        self._writer = _Writer(_Appender(self.layout.epoch_table), _Appender(self.layout.trial_table))
        self._load()

    def _load(self) -> None:
        if not self.layout.trial_table.exists():
            return
        for row in self.layout.read_trials().to_dict("records"):
            self.trials[row["trial_id"]] = {k: v for k, v in row.items() if not missing(v)}
        self._finished = sum(1 for r in self.trials.values() if r.get("status") in FINISHED)
        self._find_best()
        running = {t for t, r in self.trials.items() if r.get("status") not in FINISHED}
        if running and self.layout.epoch_table.exists():
            for trial_id, epochs in self._recorded_epochs(running).items():
                self._open[trial_id] = epochs

    def _recorded_epochs(self, trial_ids: set[str]) -> dict[str, dict[int, dict[str, Any]]]:
        """The epochs on disk and waiting in memory of ``trial_ids`` (a full read: only on resume)."""
        found: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in trial_ids}
        self._writer.wait()
        if self.layout.epoch_table.exists():
            epochs = self.layout.read_epochs()
            for row in epochs[epochs["trial_id"].isin(trial_ids)].to_dict("records"):
                found[row["trial_id"]][int(row["epoch"])] = {k: v for k, v in row.items() if not missing(v)}
        for (trial_id, epoch), record in self._pending.items():
            if trial_id in found:
                found[trial_id][epoch] = record
        return found

    def trial_started(self, trial_id: str, params: dict[str, Any]) -> None:
        row = self.trials.setdefault(
            trial_id, {"trial_id": trial_id, "epochs": 0, WALL_TIME: 0.0, "started_at": time.time()})
        self._set_status(row, "running")
        row.update({hp_column(k): v for k, v in params.items()})
        self._changed(trial_id)

    def epoch(self, trial_id: str, epoch: int, metrics: dict[str, Any], elapsed_s: float, info: dict[str, Any]) -> None:
        """Record one epoch's metrics (a retried trial overwrites the epochs it repeats).

        ``metrics`` is the engine's report of the epoch: besides the metrics, the trial's cost when the engine
        reports it (``parameters``, ``epoch_s``, ``samples_seen``).
        """
        epoch = int(epoch)
        record = {"trial_id": trial_id, "epoch": epoch, "elapsed_s": float(elapsed_s), "timestamp": time.time()}
        record.update({k: _number(metrics.get(k)) for k in EPOCH_COLUMNS})
        if (seconds := _number(metrics.get(EPOCH_SECONDS))) is not None:
            record[EPOCH_SECONDS] = seconds
        if (samples := _integer(metrics.get(SAMPLES_SEEN))) is not None:
            record[SAMPLES_SEEN] = samples
        if info.get("node_id"):
            record["node_id"] = info["node_id"]  # a trial retried after a lost node continues elsewhere
        row = self.trials.setdefault(trial_id, {"trial_id": trial_id, "status": "running"})
        opened = self._open.get(trial_id)
        if opened is None:  # a new trial, or a finished one reporting again (resumed after an error)
            opened = self._open[trial_id] = self._recorded_epochs({trial_id})[trial_id] if row.get("epochs") else {}
        repeated = bool(opened) and epoch <= max(opened)
        opened[epoch] = record
        self._pending[trial_id, epoch] = record
        row.update(info)
        row["epochs"] = max(epoch, int(row.get("epochs") or 0))
        row[WALL_TIME] = float(elapsed_s)
        if (parameters := _integer(metrics.get(PARAMETERS))) is not None:
            row[PARAMETERS] = parameters
        if isinstance(metrics.get(IMAGE_SIZE), str):
            row[IMAGE_SIZE] = metrics[IMAGE_SIZE]
        _note_costs(row, opened)
        if repeated:
            self._summarise(trial_id, opened)
        else:  # the usual case: the newest epoch is the last, and the best if it beats the best so far
            row.update({last_column(m): record.get(m) for m in METRICS})
            if self.objective.better(record.get(self.objective.name), row.get(best_column(self.objective.name))):
                row["best_epoch"] = epoch
                row.update({best_column(m): record.get(m) for m in METRICS})
                self._note_best(trial_id)
        self._changed(trial_id)

    def trial_finished(self, trial_id: str, status: str, error: str | None = None) -> None:
        assert status in STATUSES, status
        row = self.trials.setdefault(trial_id, {"trial_id": trial_id, "epochs": 0})
        if status == "completed" and int(row.get("epochs") or 0) < self.max_epochs:
            status = "pruned"
        self._set_status(row, status)
        row["error"] = error
        self._open.pop(trial_id, None)
        self._changed(trial_id)

    def trial_retried(self, trial_id: str) -> None:
        """A failed trial is being resumed from its last checkpoint."""
        row = self.trials.setdefault(trial_id, {"trial_id": trial_id, "status": "running"})
        row["retries"] = int(row.get("retries") or 0) + 1
        self._changed(trial_id)

    def finished_count(self) -> int:
        return self._finished

    def best_value(self) -> float:
        """The run's best value of its objective so far (NaN before any epoch)."""
        return math.nan if self._best is None else float(self._best[0])

    def flush(self, force: bool = False) -> None:
        """Write what changed, if ``flush_every_s`` passed since the last write or ``flush_rows`` rows wait."""
        due = time.monotonic() - self._last_flush >= self.flush_every_s or len(self._pending) >= self.flush_rows
        if (self._pending or self._dirty) and (force or due):
            # Copies of the trial rows: the writer thread must not see them change under it.
            self._writer.submit(list(self._pending.values()), [dict(self.trials[t]) for t in self._dirty])
            self._pending, self._dirty = {}, {}
            self._last_flush = time.monotonic()
        if force:
            self._writer.wait()

    def close(self) -> None:
        """Write everything and compact the parts into ``trials.parquet`` and ``epochs.parquet``."""
        self.flush(force=True)
        self._writer.stop()
        for table in self._writer.tables:
            table.compact()
        _OPEN.pop(str(self.layout.root.resolve()), None)

    def _changed(self, trial_id: str) -> None:
        self._dirty[trial_id] = None
        self.flush()

    def _set_status(self, row: dict[str, Any], status: str) -> None:
        self._finished += (status in FINISHED) - (row.get("status") in FINISHED)
        row["status"] = status

    def _summarise(self, trial_id: str, epochs: dict[int, dict[str, Any]]) -> None:
        """A trial's best and last epoch from all its epochs (when a retried trial repeated one)."""
        rows = [epochs[e] for e in sorted(epochs)]
        row = self.trials[trial_id]
        best = self.objective.best_index([r.get(self.objective.name) for r in rows])
        if best is not None:
            row["best_epoch"] = rows[best]["epoch"]
            row.update({best_column(m): rows[best].get(m) for m in METRICS})
        row.update({last_column(m): rows[-1].get(m) for m in METRICS})
        if self._best is not None and self._best[1] == trial_id:
            self._find_best()  # its best may have got worse
        else:
            self._note_best(trial_id)

    def _note_best(self, trial_id: str) -> None:
        value = self.trials[trial_id].get(best_column(self.objective.name))
        if self.objective.better(value, None if self._best is None else self._best[0]):
            self._best = (value, trial_id)

    def _find_best(self) -> None:
        self._best = None
        for trial_id in self.trials:
            self._note_best(trial_id)


class _Writer:
    """A thread that writes the store's batches (epoch rows, trial rows) in order, one batch at a time.

    At most :data:`QUEUED` batches wait: a disk slower than the search slows the search instead of filling memory.
    A failed write is raised by the next ``submit``, ``wait`` or ``stop``; the batches after it are not written.
    """

    def __init__(self, *tables: _Appender):
        self.tables = tables
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUED)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def submit(self, *batches: list[dict[str, Any]]) -> None:
        self._raise()
        if self.thread is None:  # started on the first write: a store opened only to read needs none
            self.thread = threading.Thread(target=self._run, name="automl-store-writer", daemon=True)
            self.thread.start()
        self.queue.put(batches)

    def wait(self) -> None:
        """Until every batch submitted so far is on disk."""
        self.queue.join()
        self._raise()

    def stop(self) -> None:
        self.wait()
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def _run(self) -> None:
        while (batches := self.queue.get()) is not None:
            try:
                if self.error is None:
                    for table, rows in zip(self.tables, batches, strict=True):
                        table.append(rows)
            except BaseException as exc:  # noqa: BLE001 - raised in the engine's thread instead
                self.error = exc
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            raise OSError(f"the results store could not be written: {self.error}") from self.error


class _Appender:
    """Writes one :class:`~automl.layout.PartedTable`: appends parts, merges them by size, compacts them."""

    def __init__(self, table: PartedTable):
        self.table = table
        through, parts = table.through(), table.parts()
        self.parts = table.live(parts, through)
        for part in parts:  # a crash between writing a merged part (or the base) and deleting what it holds
            if part not in self.parts:
                part.path.unlink(missing_ok=True)
        self.next = max([through, *(p.last for p in parts)]) + 1

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if not self.parts and not self.table.base.is_file():
            # A new table's first batch is its base file: trials.parquet exists from the first flush on.
            self._write_base(_arrow(rows), self.next)
            self.next += 1
            return
        self._write(self.next, self.next, _arrow(rows))
        self.next += 1
        while len(self.parts) >= MERGE_FANOUT and len({p.span for p in self.parts[-MERGE_FANOUT:]}) == 1:
            merged = self.parts[-MERGE_FANOUT:]
            table = latest(concat_tables([read_parquet(p.path) for p in merged]), self.table.key)
            del self.parts[-MERGE_FANOUT:]
            self._write(merged[0].first, merged[-1].last, table)
            for part in merged:
                part.path.unlink()

    def compact(self) -> None:
        """The base file rewritten with every part in it, then the parts deleted."""
        if not self.parts:
            return
        self._write_base(self.table.read_table(), self.next - 1)
        for part in self.parts:
            part.path.unlink(missing_ok=True)
        self.parts = []
        try:
            self.table.folder.rmdir()
        except OSError:
            pass  # not empty (a file that is not ours), or gone

    def _write_base(self, table, through: int) -> None:
        table = (self.table.arrange(table) if self.table.arrange else table).replace_schema_metadata(
            {PARTS_THROUGH: str(through).encode()})
        atomic_write(self.table.base, lambda f: _write_parquet(table, f))

    def _write(self, first: int, last: int, table) -> None:
        path = self.table.part_path(first, last)
        atomic_write(path, lambda f: _write_parquet(table, f))
        self.parts.append(Part(first, last, path))


def _arrow(rows: list[dict[str, Any]]):
    """Rows (dicts with any keys) as a pyarrow table: every key a column, null where a row lacks it."""
    import pyarrow as pa

    columns = dict.fromkeys(k for row in rows for k in row)
    return pa.table({c: [row.get(c) for row in rows] for c in columns})


def _write_parquet(table, f) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, f)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """What a measurement was made on: recorded next to every timing."""
    import os
    import platform

    from automl import __version__

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "memory_gib": round(memory / 2**30, 1), "automl": __version__,
    }


def write_run_info(run_dir: Path, **info: Any) -> dict:
    """Merge ``info`` into ``run.json`` (atomically) and return the whole record."""
    layout = RunLayout(run_dir)
    record = layout.read_info()
    record.update(info)
    write_json(layout.info_file, record)
    return record


def _note_costs(row: dict[str, Any], epochs: dict[int, dict[str, Any]]) -> None:
    """A trial's ``seconds_per_epoch`` and ``samples_seen`` from its epochs (a handful: the cost of a report does not
    grow with the run)."""
    seconds = epoch_seconds(epochs)
    if seconds:
        row[SECONDS_PER_EPOCH] = statistics.median(seconds)
    seen = [epochs[e][SAMPLES_SEEN] for e in sorted(epochs) if epochs[e].get(SAMPLES_SEEN) is not None]
    if seen:
        row[SAMPLES_SEEN] = int(seen[-1])


def epoch_seconds(epochs: dict[int, dict[str, Any]]) -> list[float]:
    """The seconds each epoch took (by epoch number): ``epoch_s`` as reported, else the difference of ``elapsed_s``
    from the epoch before (for the first epoch, ``elapsed_s`` itself: model building included); an epoch with
    neither is left out."""
    seconds = []
    for epoch in sorted(epochs):
        record = epochs[epoch]
        if not missing(record.get(EPOCH_SECONDS)):
            seconds.append(float(record[EPOCH_SECONDS]))
            continue
        before = 0.0 if epoch <= 1 else (epochs.get(epoch - 1) or {}).get("elapsed_s")
        elapsed = record.get("elapsed_s")
        if not missing(elapsed) and not missing(before) and elapsed >= before:
            seconds.append(float(elapsed) - float(before))
    return seconds


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None or math.isnan(number) else int(number)


def missing(value: Any) -> bool:
    """Whether a stored value is absent: None, or the NaN a Parquet column holds where a row has no value."""
    return value is None or (isinstance(value, float) and math.isnan(value))
