"""One writer per run folder: an advisory ``flock`` on a lock file, with who holds it written inside.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder, run_lock(Path(folder) / LOCK_FILE, "automl search") as lock:
...     holder(lock)["command"]
'automl search'

While a command holds the lock, the file records its pid, host, command and start time (JSON), so a second
command is refused at once with one line saying who is writing. The kernel releases an ``flock`` when its holder
exits in any way, SIGKILL and power loss included, so there are no stale locks to clean up: a lock file that still
names a holder who is gone is simply taken over, and the takeover is said in one console line.

Storage shared by several hosts:

- Local disks and NFSv4 (Linux clients emulate ``flock`` with NFS byte-range locks, which the server enforces
  across hosts): two hosts writing the same run folder are refused as on one machine. If a client host loses its
  lease (crash, network partition) the server frees its lock after the lease time (90 s by default).
- NFSv3 needs a working ``lockd``/``statd`` (mount option ``lock``, not ``nolock``); with ``nolock`` a lock is only
  seen on its own host.
- Filesystems without working locks (some FUSE mounts: s3fs, gcsfuse, sshfs; SMB without ``nobrl`` support):
  ``flock`` either fails, and the command stops with one line saying the folder cannot be locked, or succeeds on
  every host without excluding anyone. In the second case the record in the file is the only guard: a live holder
  on the same host is still detected and refused, a holder on another host cannot be, and the second command
  says it took over a lock. Keep run folders on a local disk or an NFS mount, and point the cluster's shared
  checkpoints (``--storage``) at the object store instead.

This module imports only the standard library, so commands can take the lock before TensorFlow's 4 s import.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from automl.errors import UserError

#: The lock file's usual name inside a run folder.
LOCK_FILE = ".lock"


class RunLockedError(UserError):
    """Another command is writing the same run folder."""


def _umasked(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def holder_record(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _read(fd: int) -> dict | None:
    """The holder recorded in the open lock file, or None when it is empty or unreadable (a crash mid-write)."""
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(record: dict | None) -> str:
    if not record:
        return "another command (it has not said which yet)"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
            f"({record.get('command', '?')}, since {record.get('since', '?')})")


def alive_here(record: dict) -> bool:
    """Whether ``record`` names a process still running on this host (not this one, and not a reused pid)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid() or pid <= 0:
        return False
    started = _process_start(pid)
    if started is None:
        return False
    try:
        since = datetime.datetime.fromisoformat(str(record.get("since"))).timestamp()
    except ValueError:
        return False
    return started <= since + 2  # a process started after the record was written only reuses the pid


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (Unix time), or None if it is gone or this is not Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name in parentheses
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def run_lock(lock_path: Path, command: str) -> Iterator[Path]:
    """Hold the lock ``lock_path`` (its folder is the run folder) for the block; yields ``lock_path``.

    Raises :class:`RunLockedError` at once if another process holds it. Released on exit, exceptions and
    KeyboardInterrupt included. The lock is not re-entrant: a second ``run_lock`` on the same file, even in the same
    process, is refused.
    """
    lock_path = Path(lock_path)
    run_dir = lock_path.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _umasked(0o666))
    except OSError as exc:
        raise UserError(f"{lock_path}: cannot open the lock file ({exc.strerror})") from None
    try:
        _acquire(fd, lock_path, run_dir, command)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # an empty file: the next holder knows this one left properly
        os.close(fd)  # closing the last descriptor releases the flock


def _acquire(fd: int, lock_path: Path, run_dir: Path, command: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record = _read(fd)
        if record is None:  # the holder took the lock a moment ago and is writing its record
            time.sleep(0.05)
            record = _read(fd)
        raise RunLockedError(f"{run_dir} is in use by {describe_holder(record)}; "
                             "wait for it to finish or stop it") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        raise UserError(f"{lock_path}: the filesystem of {run_dir} does not support locks ({exc.strerror}); "
                        "keep run folders on a local disk or an NFS mount") from None
    previous = _read(fd)
    if previous and alive_here(previous):
        # flock granted while the recorded holder runs here: the filesystem ignores locks, so trust the record.
        fcntl.flock(fd, fcntl.LOCK_UN)
        raise RunLockedError(f"{run_dir} is in use by {describe_holder(previous)}; wait for it to finish or stop it")
    if previous:
        from automl import console  # only now: rich is not needed on the common path

        console.info(f"{run_dir}: taking over the lock of {describe_holder(previous)}, which is no longer running")
    data = json.dumps(holder_record(command)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data + b"\n", 0)


def holder(lock_path: Path) -> dict | None:
    """The record of the process holding ``lock_path`` (pid, host, command, since), or None if nobody holds it."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {}
        except OSError:
            return None
        # A shared lock was granted, so nobody writes: a record left here is a dead holder's.
        return None
    finally:
        os.close(fd)  # also releases the shared lock, if taken
