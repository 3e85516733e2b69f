"""Durable, atomic file output: a reader never sees a torn file, an interrupted command leaves nothing half-written,
and no command deletes a folder it did not write.

Folders a command writes as a whole (``automl train --out``, ``automl export --out``, a run's ``retrain/`` and
``ensemble/``) are built in a hidden sibling and swapped in at the end by :func:`staged_dir`. The swap replaces an
existing folder only when that folder is ours; see :func:`check_output_dir` for the rule.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

from automl import __version__
from automl.errors import UserError

#: Written into every folder :func:`staged_dir` produces: it marks the folder as safe to replace as a whole.
MARKER = ".skin-automl"

#: Every top-level name that versions before the marker wrote into a staged folder: ``automl train --out``,
#: ``automl export --out``, a run's ``retrain/`` and ``ensemble/``. Frozen: new outputs carry the marker instead.
LEGACY_NAMES = frozenset({
    "metrics.json", "model.keras", "history.csv", "spec.yaml",
    "saved_model", "model_card.json", "model_card.md",
    "members", "members.parquet", "labels.npz",
    "ensemble.json", "confusion_matrix.png", "roc.png", "report.md",
})


class OutputDirError(UserError):
    """An output folder that must not be replaced: it holds someone's files, or it is the working folder."""


def _umasked(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


_PUBLIC_FILE, _PUBLIC_DIR = _umasked(0o666), _umasked(0o777)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable; skipped where a folder cannot be synced (some network mounts)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder below ``root`` to disk: what a block wrote survives a power cut after the swap."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue  # only regular files hold data; opening a FIFO would block
            with contextlib.suppress(OSError):  # a file we may not open: nothing we can flush
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(folder))


def atomic_write(path: Path, content: bytes | str | Callable[[IO[bytes]], Any]) -> None:
    """Write ``content`` (or let a callable write to the open file) to a temporary file, then rename.

    The file is fsynced before the rename and its folder after it, so after a power cut ``path`` holds either the
    old content or the new, complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _PUBLIC_FILE)  # mkstemp's 0600 would make results unreadable to others
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON with NaN written as null (JSON has no NaN)."""
    atomic_write(path, json.dumps(_finite(data), indent=2) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def check_output_dir(out: Path, overwrite: bool = False, expected: Collection[str] | None = None) -> Path:
    """``out`` as an absolute path, after checking a command may replace it; raises :class:`OutputDirError` if not.

    Run it before expensive work; :func:`staged_dir` runs it again before its swap. An existing folder is replaced
    only if

    - it carries the :data:`MARKER` file (this product wrote it), or
    - it is empty, or
    - every entry in it is a name the new folder will hold too, so it holds nothing but what is about to be
      rewritten. This admits folders written before the marker existed, such as the committed
      ``results/reference/model``. The names are ``expected``; in :func:`staged_dir`'s last check before the swap,
      the names the stage actually holds. Without ``expected`` (a caller checking up front) they are
      :data:`LEGACY_NAMES`, every name such folders can hold: the exact comparison then waits for the swap.

    ``overwrite=True`` (the CLI's ``--overwrite``) skips these checks. Never allowed, even with ``overwrite``: the
    working folder or one of its ancestors (``--out .``, ``--out ..``), the filesystem root, and a path that exists
    but is not a folder.
    """
    out = Path(out).resolve()  # `.`, `..`, trailing slashes and symlinks resolved
    if out == out.parent:
        raise OutputDirError(f"{out}: cannot replace the filesystem root; choose another --out")
    with contextlib.suppress(OSError):  # a deleted working folder cannot be an ancestor of anything we write
        cwd = Path.cwd().resolve()
        if out == cwd or out in cwd.parents:
            what = "the current folder" if out == cwd else "a folder containing the current folder"
            raise OutputDirError(f"{out}: is {what}, which a command never replaces; choose another --out, "
                                 "e.g. a new subfolder")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: exists and is not a folder; choose another --out")
    if overwrite or not out.is_dir():
        return out
    try:
        entries = set(os.listdir(out))
    except OSError as exc:
        raise OutputDirError(f"{out}: cannot read this folder ({exc.strerror}); choose another --out") from None
    names = LEGACY_NAMES if expected is None else set(expected)
    if not entries or MARKER in entries or entries <= names:
        return out
    foreign = sorted(entries - names)
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise OutputDirError(f"{out}: exists and holds files this command did not write ({shown}); choose another --out "
                         "(or move those files away), or pass --overwrite to replace the whole folder")


@contextlib.contextmanager
def staged_dir(out: Path, overwrite: bool = False, expected: Collection[str] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out``, on failure it is removed (and one that a
    killed command left is removed by the next ``staged_dir`` of ``out`` on the same machine).

    Never deletes what the product did not write: ``out`` is replaced only under the rule of
    :func:`check_output_dir`, unless ``overwrite`` is true: checked before the block runs (against ``expected``, the
    names the block will write, if given) and again before the swap, against the names the block did write. The
    finished folder gets a :data:`MARKER` file. On Linux the stage and ``out`` are exchanged in one atomic
    ``renameat2(RENAME_EXCHANGE)``, so ``out`` always exists under its name; elsewhere ``out`` is briefly renamed
    aside. The old copy is then removed.
    """
    out = check_output_dir(out, overwrite, expected)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_stages(out)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=_stage_prefix(out), suffix=_STAGE_SUFFIX))
    except OSError as exc:
        raise OutputDirError(f"{out}: cannot create a folder here ({exc.strerror}); choose another --out") from None
    try:
        stage.chmod(_PUBLIC_DIR)
        yield stage
        check_output_dir(out, overwrite, expected=os.listdir(stage))
        (stage / MARKER).write_text(f"written by skin-automl {__version__}: automl replaces this folder as a whole "
                                    "when the command that wrote it runs again\n")
        _fsync_tree(stage)
        _swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


_STAGE_SUFFIX = ".partial"


def _stage_prefix(out: Path) -> str:
    """A stage's name says which machine and process builds it: a later command can tell one a killed command left."""
    return f"{_stages_here(out)}{os.getpid()}-"


def _stages_here(out: Path) -> str:
    return f".{out.name}.{socket.gethostname()}-"


def _remove_abandoned_stages(out: Path) -> None:
    """Delete the stages of ``out`` that a killed command left behind (a SIGKILL skips the cleanup): those named
    by this machine for a process that no longer runs. Any other stage is left alone: it may be being written."""
    named = re.compile(re.escape(_stages_here(out)) + r"(\d+)-\w+" + re.escape(_STAGE_SUFFIX))
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            if (found := named.fullmatch(entry.name)) and entry.is_dir(follow_symlinks=False) \
                    and not _running(int(found[1])):
                shutil.rmtree(entry.path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _swap_in(stage: Path, out: Path) -> None:
    """Move ``stage`` to ``out``, replacing any folder there; the old copy ends up deleted."""
    if not out.exists() and not out.is_symlink():
        os.rename(stage, out)
    elif _exchange(stage, out):
        shutil.rmtree(stage, ignore_errors=True)  # the stage's name now holds the old folder
    else:
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old)  # renaming a folder onto an empty folder replaces it
        try:
            os.rename(stage, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@functools.cache
def _renameat2() -> Any:
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded into this process
        function = libc.renameat2  # glibc 2.28 and later; absent on macOS
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the C library or the filesystem cannot (then nothing was changed)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False  # an old kernel, or a filesystem without exchange (some network and FUSE mounts)
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")
