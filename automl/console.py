"""Console output shared by every command: messages and progress on stderr, tables on stdout."""

from __future__ import annotations

import contextlib
import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:
    out = Console(highlight=False, soft_wrap=True, width=200)  # logs and CI: do not squeeze tables to 80 columns


def info(message: str) -> None:
    err.print(message, markup=False)


@contextlib.contextmanager
def progress(total: int, description: str):
    """Yield ``advance(done)``: a live bar on a terminal, a line per 10% otherwise (logs, CI)."""
    if err.is_terminal:
        with Progress(
            TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)
        return
    start, step = time.monotonic(), max(1, total // 10)

    def advance(done: int) -> None:
        if done % step == 0 or done == total:
            info(f"{description}: {done}/{total} ({time.monotonic() - start:.1f}s)")

    yield advance


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notices) silenced.

    Those lines go straight to file descriptor 2 and read like errors on a CPU machine. Python
    exceptions are unaffected: an import that fails still raises with its traceback.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        tf.constant(0)  # the first op probes CUDA once more
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
