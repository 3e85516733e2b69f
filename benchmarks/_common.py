"""What the benchmark scripts share: paths, result files, tables, figures, and searches run as `automl search`.

A script imports it after putting its own folder on ``sys.path`` (they run as plain scripts, not a package)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import REPO, print_table, write_result
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from automl import console
from automl.files import atomic_write, write_json
from automl.layout import RunLayout
from automl.spec import Spec, load_spec
from automl.store import machine_info, utc_now, write_run_info

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "benchmarks"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000_28"
RUNS = "runs"  # scratch search folders below the output folder (not curated, ignored by git)
LOG_FILE = "search.log"
# Checkpoints are only needed to resume a search; the benchmarks read the store, and 18 searches'
# checkpoints would take gigabytes.
CHECKPOINT_DIRS = ("ray", "keras_tuner")
# automl's embedded Ray is ray.init() without an address, which joins the cluster named in
# /tmp/ray/ray_current_cluster when there is one (left by any `ray start` on the machine, even a
# dead one: the search then waits for it forever). Benchmarks measure this machine alone.
LOCAL_RAY = {"RAY_ADDRESS": "local"}


def command_line() -> str:
    """How this benchmark was run, as a shell command."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def write_result(path: Path, payload: dict[str, Any]) -> None:
    """Write a benchmark's JSON atomically, with the command, the time, the machine and its load at the end."""
    write_json(path, {"command": command_line(), "written": utc_now(), "machine": machine_info(),
                      "load_average_at_end": list(os.getloadavg())} | payload)


def write_text_result(path: Path, text: str) -> None:
    """Write a benchmark's markdown atomically, under a line saying how it was run and when."""
    atomic_write(path, f"`{command_line()}`, written {utc_now()}.\n\n{text}")


def check_idle() -> list[float]:
    """The 1, 5 and 15-minute load averages, with a warning when other work competes for the CPUs."""
    load = list(os.getloadavg())
    cpus = os.cpu_count() or 1
    if load[0] > 0.5 * cpus:
        console.info(f"warning: the machine is busy (load average {load[0]:.1f} on {cpus} CPUs): timings will be "
                     "slower and noisier than on an idle machine")
    return load


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any] | None],
                caption: str | None = None, left: Collection[str] = ()) -> None:
    """A rich table on stdout; the first column and those named in ``left`` are left-aligned, the others
    right-aligned. A row that is None draws a line between two groups of rows."""
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 or name in left else "right")
    for row in rows:
        if row is None:
            table.add_section()
        else:
            table.add_row(*(str(cell) for cell in row))
    console.out.print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any] | None], title: str | None = None,
                   caption: str | None = None, left: Collection[str] = ()) -> str:
    """The same table as ``print_table`` in GitHub markdown, for a result file or a README: the title as a bold line
    above it, the caption below; a row that is None is an empty row between two groups."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    align = ["---" if i == 0 or name in left else "---:" for i, name in enumerate(columns)]
    body = [line(columns), "| " + " | ".join(align) + " |",
            *(line([""] * len(columns)) if row is None else line(row) for row in rows)]
    return "\n".join([*([f"**{title}**", ""] if title else []), *body, *(["", caption] if caption else [])]) + "\n"


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it (laid out tightly unless it has a layout engine)."""
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130))
    plt.close(fig)


#: A model whose validation balanced accuracy is this close to 1 / classes predicts (almost) one class whatever
#: the image: the uniform-output plateau that class-weighted models sit on for their first epochs.
CHANCE_MARGIN = 0.01


def at_chance(balanced_accuracy: float, n_classes: int = 7) -> bool:
    return abs(balanced_accuracy - 1 / n_classes) < CHANCE_MARGIN


def fmt(value: float | None, digits: int = 3, missing: str = "-") -> str:
    """A number for a table cell; None and NaN show as ``missing``."""
    if value is None or math.isnan(value):
        return missing
    return f"{value:.{digits}f}"


def sample_params(space_file: Path, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` hyperparameter sets drawn at random from the space of ``space_file`` (conditional ones included,
    only where their condition holds), as a random search draws them."""
    from automl.search._feasible import random_draws

    return random_draws(load_spec(space_file).space, count, seed)


def stop_child(child: subprocess.Popen, timeout_s: float = 120) -> None:
    """Ctrl-C (a search stops gracefully and records its state; a server shuts down), then SIGKILL of the child's
    session after ``timeout_s``."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One JSON line appended and flushed: a resumable benchmark's record of one finished measurement."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows :func:`append_row` wrote (a line cut short by a kill is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


# --- searches ------------------------------------------------------------------------------------


@dataclass
class SearchOutcome:
    """How one ``automl search`` child process ended."""

    run_dir: Path
    command: str
    returncode: int
    seconds: float
    stopped_after_budget: bool


def run_search_process(
    spec: Spec, data_dir: Path, run_dir: Path, stop_after_s: float | None = None, start_timeout_s: float = 300.0
) -> SearchOutcome:
    """Run ``automl search`` on ``spec`` in a child process, into a fresh ``run_dir``; console output goes to its log.

    A child process per search, as a user runs it: each search gets its own Ray instance and
    TensorFlow, and nothing one leaves behind (threads, graphs, memory) slows the next. The
    resolved spec is written as the run's ``spec.yaml`` and the search reads it from there, so the
    folder records exactly what ran. With ``stop_after_s`` the child gets Ctrl-C (SIGINT) that many
    seconds after the search started (``run.json``'s ``started``): KerasTuner checks its time
    budget only between trials and would otherwise finish a long trial past it. A child that has
    not started its search after ``start_timeout_s`` is stopped as failed.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    atomic_write(RunLayout(run_dir).spec, spec.to_yaml())
    command = [sys.executable, "-m", "automl", "search", str(RunLayout(run_dir).spec), "--data", str(data_dir),
               "--name", run_dir.name, "--results", str(run_dir.parent)]
    launched = time.monotonic()
    stopped_after_budget = False
    with open(run_dir / LOG_FILE, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        # Its own session: Ctrl-C at the terminal reaches only us, and we pass on exactly one SIGINT
        # (a second one would make Ray Tune abort instead of stopping gracefully).
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                 env=os.environ | LOCAL_RAY)
        try:
            while child.poll() is None:
                time.sleep(2.0)
                since_start = _seconds_since_start(run_dir)
                if since_start is None and time.monotonic() - launched > start_timeout_s:
                    log.write(f"\n[benchmark] no search started after {start_timeout_s:.0f} s; stopping it\n")
                    log.flush()
                    _stop(child)
                elif stop_after_s is not None and since_start is not None and since_start > stop_after_s:
                    stopped_after_budget = True
                    _stop(child)  # the search records what it has and exits
        except KeyboardInterrupt:
            _stop(child)  # it marks its run interrupted; a rerun of the benchmark redoes it
            raise
    return SearchOutcome(run_dir, shlex.join(command), child.returncode, time.monotonic() - launched,
                         stopped_after_budget)


def use_local_ray() -> None:
    """Make this process's embedded Ray a new local instance (see :data:`LOCAL_RAY`)."""
    os.environ.update(LOCAL_RAY)


def _seconds_since_start(run_dir: Path) -> float | None:
    started = RunLayout(run_dir).read_info().get("started")
    return time.time() - iso_to_unix(started) if started else None


def _stop(child: subprocess.Popen, grace_s: float = 120.0) -> None:
    """SIGINT (the search stops gracefully and records its state), then SIGKILL if it does not end in time."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def mark_complete(outcome: SearchOutcome, budget_s: float | None = None, **details: Any) -> bool:
    """Record in ``run.json`` (key ``benchmark``) whether the search ran to its end or its budget; False if it did not.

    A Ray search ended by its time budget says ``interrupted`` (Tune stops the trials in flight
    without completing them), so a search also counts as complete when it exited by itself after
    at least ``budget_s`` seconds, or when we stopped it past its budget, even if it had to be
    killed (a KerasTuner trial that ignored Ctrl-C): the benchmark measures only the epochs within
    the budget, and the store writes each of them atomically. A later benchmark run reuses a
    complete search instead of running it again; its checkpoints, no longer needed, are deleted.
    """
    info = RunLayout(outcome.run_dir).read_info()
    ran_out = budget_s is not None and (info.get("wall_s") or 0) >= budget_s
    exited = outcome.returncode == 0 and (info.get("status") == "finished" or ran_out)
    complete = (exited or outcome.stopped_after_budget) and (RunLayout(outcome.run_dir).epochs).is_file()
    write_run_info(outcome.run_dir, benchmark={
        "complete": complete, "command": outcome.command, "returncode": outcome.returncode,
        "seconds": round(outcome.seconds, 1), "stopped_after_budget": outcome.stopped_after_budget,
        "budget_s": budget_s, **details,
    })
    if complete:
        for name in CHECKPOINT_DIRS:
            shutil.rmtree(outcome.run_dir / name, ignore_errors=True)
    return complete


def reusable(run_dir: Path, spec: Spec, data_dir: Path) -> bool:
    """True when ``run_dir`` holds a complete benchmark search of exactly this spec on this data folder."""
    spec_file, info = RunLayout(run_dir).spec, RunLayout(run_dir).read_info()
    return (
        info.get("benchmark", {}).get("complete") is True
        and info.get("data_dir") == str(data_dir)
        and spec_file.is_file()
        and spec_file.read_text() == spec.to_yaml()
        and RunLayout(run_dir).epochs.is_file()
    )


@dataclass
class SearchRecord:
    """A finished search as the benchmarks read it: epochs in the order they were recorded, and the trials."""

    info: dict[str, Any]
    epochs: pd.DataFrame  # one row per epoch, by time; ``t`` is seconds since the search started
    trials: pd.DataFrame

    @property
    def started(self) -> float:
        return iso_to_unix(self.info["started"])


def read_search(run_dir: Path) -> SearchRecord:
    """The store of one search, with every epoch's time since the search began (``run.json``'s ``started``).

    ``started`` is written after the data is loaded and the engine (Ray) started, right before the
    search begins, for both engines; it has whole seconds, so times may be overstated by up to 1 s.
    """
    info = RunLayout(run_dir).read_info()
    epochs = RunLayout(run_dir).read_epochs() if RunLayout(run_dir).epochs.is_file() else pd.DataFrame()
    trials = RunLayout(run_dir).read_trials() if RunLayout(run_dir).trials.is_file() else pd.DataFrame()
    if not epochs.empty:
        epochs = epochs.sort_values("timestamp", kind="stable").reset_index(drop=True)
        epochs["t"] = epochs["timestamp"] - iso_to_unix(info["started"])
    return SearchRecord(info, epochs, trials)


def iso_to_unix(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()
