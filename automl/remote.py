"""Run and model folders at a URI (``s3://``, ``gs://``, any filesystem ``pyarrow.fs`` opens): a local working copy,
mirrored to the object store.

Commands keep working on local files, where atomic renames, SQLite and ``flock`` hold, in a working copy below the
cache folder (never the working folder). A command that writes a run folder at a URI (:func:`checked_out`)

1. takes the run's :class:`Lease` on the object store (one writer per run),
2. pulls the folder into its working copy (the store is the truth: files it lacks are removed locally),
3. pushes what changed every :data:`PUSH_EVERY_S` seconds while it works, and once more at the end.

A push uploads new and changed files first (each object appears whole: a ``PUT`` is atomic), then the files that
mark a stage as finished (``run.json``, the staged folders' marker), then deletes what the working copy no longer
holds; SQLite files (Optuna's study) are uploaded as a consistent snapshot (SQLite's backup API). A driver killed
outright therefore loses at most what it wrote in the last ``PUSH_EVERY_S`` seconds (plus the results store's own
2 s), and a reader may briefly see a staged folder (``retrain/``, ``ensemble/``, ``model/``) half old, half new
while it is uploaded. Ray Tune's own experiment and checkpoints (``ray/``, ``ray-retrain/``, ...) are not mirrored:
Tune writes them to the same URI itself (:func:`join`).

Credentials and endpoints come the way the ecosystem passes them: the standard AWS environment variables, which
``pyarrow.fs`` reads (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ...), or the URI's own
options. pyarrow 26 does not read ``AWS_ENDPOINT_URL`` (checked against an S3-compatible server: it went to
amazonaws.com), so :func:`with_endpoint` maps it (or ``AWS_ENDPOINT_URL_S3``) into an ``s3://`` URI's options::

    >>> location = Location.parse("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http", "--results")
    >>> location.path, location.display, location.join("quick").uri
    ('bucket/runs', 's3://bucket/runs', 's3://bucket/runs/quick?endpoint_override=127.0.0.1:9000&scheme=http')
    >>> is_uri("results"), is_uri("gs://bucket/runs")
    (False, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from automl.errors import UserError
from automl.files import MARKER, atomic_write
from automl.lock import RunLockedError, alive_here, describe_holder, holder_record, run_lock

#: Seconds between two pushes of a working copy while a command writes it.
PUSH_EVERY_S = 5.0
#: The run's lease object, and how long it holds without renewal (renewed every third of that).
LEASE_NAME, LEASE_TTL_S = ".lease.json", 60.0
#: How long a new lease waits before reading itself back: longer than any competitor's check-to-write time.
LEASE_SETTLE_S = 2.0
#: The working copy's own bookkeeping: what each file was when last pulled or pushed.
STATE_NAME = ".mirror.json"
#: Files whose upload marks the end of a stage: pushed after everything else.
LAST_PUSHED = (MARKER, "run.json")


def is_uri(location: str | os.PathLike | None) -> bool:
    """Whether ``location`` names a folder at a URI (``s3://...``) rather than a local path."""
    return location is not None and "://" in str(location)


def with_endpoint(uri: str) -> str:
    """An ``s3://`` URI with the endpoint of ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` as its options, unless it
    names one itself; any other URI as it is. Ray's workers get the endpoint from the URI then, not their environment.

    >>> os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9000"
    >>> with_endpoint("s3://bucket/runs")
    's3://bucket/runs?endpoint_override=127.0.0.1%3A9000&scheme=http'
    >>> with_endpoint("s3://bucket/runs?endpoint_override=minio:9000")
    's3://bucket/runs?endpoint_override=minio:9000'
    >>> del os.environ["AWS_ENDPOINT_URL"]
    """
    from urllib.parse import urlencode, urlsplit

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not uri.startswith("s3://") or not endpoint or "endpoint_override=" in uri:
        return uri
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    options = urlencode({"endpoint_override": parts.netloc, "scheme": parts.scheme})
    return f"{uri}{'&' if '?' in uri else '?'}{options}"


@dataclass(frozen=True)
class Location:
    """A folder at a URI: its filesystem, its path there, and the URI's scheme and options (kept for :meth:`join`)."""

    filesystem: Any
    path: str
    scheme: str
    query: str = ""

    @classmethod
    def parse(cls, uri: str, what: str) -> Location:
        """Open ``uri`` (``what`` names the flag for the error line); a :class:`UserError` if pyarrow cannot."""
        from pyarrow import fs

        text = with_endpoint(str(uri).rstrip("/"))
        scheme, _, rest = text.partition("://")
        _, _, query = rest.partition("?")
        try:
            filesystem, path = fs.FileSystem.from_uri(text)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types (unknown scheme, bad option, ...)
            raise UserError(f"{what} {_shown(text)}: cannot open it ({_first_line(exc)}); check the URI, its "
                            "options and the credentials (e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL)") from None
        if not path.strip("/"):
            raise UserError(f"{what} {_shown(text)}: give a bucket and, usually, a prefix (e.g. s3://bucket/runs)")
        return cls(filesystem, path.rstrip("/"), scheme, query)

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def display(self) -> str:
        """The URI without its options (which may hold keys): for messages."""
        return f"{self.scheme}://{self.path}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    def join(self, *names: str) -> Location:
        return Location(self.filesystem, "/".join([self.path, *names]), self.scheme, self.query)

    def _key(self, relative: str) -> str:
        return f"{self.path}/{relative}"

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file below the folder: relative path -> (size, mtime in ns); empty when the folder does not exist."""
        from pyarrow import fs

        try:
            infos = self.filesystem.get_file_info(fs.FileSelector(self.path, recursive=True, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001 - network and permission errors of any filesystem
            raise UserError(f"{self.display}: cannot list it ({_first_line(exc)}); check the URI and credentials") \
                from None
        found = {}
        for info in infos:
            if info.type == fs.FileType.File:
                found[info.path[len(self.path) + 1:]] = (info.size, info.mtime_ns or 0)
        return found

    def exists(self) -> bool:
        return bool(self.files())

    def read_bytes(self, relative: str) -> bytes | None:
        """A file's content, or None when it does not exist."""
        try:
            with self.filesystem.open_input_stream(self._key(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, relative: str, content: bytes) -> None:
        self._ensure_parent(relative)
        with self.filesystem.open_output_stream(self._key(relative)) as stream:
            stream.write(content)

    def upload(self, local: Path, relative: str) -> None:
        """Copy a local file to ``relative``; a reader sees the old object or the whole new one."""
        from pyarrow import fs

        self._ensure_parent(relative)
        key = self._key(relative)
        if isinstance(self.filesystem, fs.LocalFileSystem):  # a plain file would be visible half-written
            staging = f"{key}.{uuid.uuid4().hex}.tmp"
            fs.copy_files(str(local), staging, destination_filesystem=self.filesystem)
            self.filesystem.move(staging, key)
        else:  # object stores publish an object when its upload completes
            with open(local, "rb") as source, self.filesystem.open_output_stream(key) as stream:
                shutil.copyfileobj(source, stream, 1 << 20)

    def download(self, relative: str, local: Path) -> bool:
        """Copy ``relative`` to ``local`` atomically; False when it vanished meanwhile."""
        def copy(target) -> None:
            with self.filesystem.open_input_stream(self._key(relative)) as stream:
                shutil.copyfileobj(stream, target, 1 << 20)

        try:
            atomic_write(local, copy)
        except FileNotFoundError:
            return False
        return True

    def delete(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_file(self._key(relative))

    def _ensure_parent(self, relative: str) -> None:
        from pyarrow import fs

        if isinstance(self.filesystem, fs.LocalFileSystem):
            self.filesystem.create_dir(str(PurePosixPath(self._key(relative)).parent), recursive=True)


def join(location: str, *names: str) -> str:
    """``location``/``names``: a local path, or a URI with its options kept at the end."""
    if not is_uri(location):
        return str(Path(location, *names))
    base, _, query = str(location).rstrip("/").partition("?")
    return "/".join([base.rstrip("/"), *names]) + (f"?{query}" if query else "")


def working_copy(location: Location, purpose: str) -> Path:
    """The local folder mirroring ``location`` for ``purpose`` (``run``: a writer's; ``view``, ``model``: readers'):
    below the cache folder, one per endpoint and path, so that a reader never pulls over a writer's copy."""
    from automl.data import default_cache_dir

    endpoint = hashlib.sha256(f"{location.scheme}?{location.query}".encode()).hexdigest()[:8]
    return default_cache_dir() / "remote" / purpose / f"{location.scheme}-{endpoint}" / location.path


def _never(_relative: str) -> bool:
    return False


class Mirror:
    """A local folder and a folder at a URI kept the same, one direction at a time.

    :meth:`pull` makes the local folder what the remote one holds; :meth:`push` the other way round. ``skip`` names
    relative paths neither direction touches (Tune's own folders, the lock). What each file was when last copied is
    kept in :data:`STATE_NAME`, so a copy is repeated only for files that changed since.
    """

    def __init__(self, local: Path, remote: Location, skip: Callable[[str], bool] = _never, keep_state: bool = True):
        self.local, self.remote = Path(local), remote
        self.skip = lambda relative: relative == STATE_NAME or skip(relative)
        self._state_file = self.local / STATE_NAME if keep_state else None
        self._state = self._read_state()

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError, AttributeError):
            return {}
        return state if isinstance(state, dict) and state.get("remote") == self.remote.uri else {}

    def _save_state(self) -> None:
        if self._state_file is not None:
            self._state["remote"] = self.remote.uri
            atomic_write(self._state_file, json.dumps(self._state))

    @property
    def _files(self) -> dict[str, dict[str, list[int]]]:
        return self._state.setdefault("files", {})

    def local_files(self) -> dict[str, tuple[int, int]]:
        found = {}
        for folder, folders, names in os.walk(self.local):
            folders[:] = [f for f in folders if not f.endswith((".partial", ".old"))]  # stages being built
            for name in names:
                path = Path(folder, name)
                relative = path.relative_to(self.local).as_posix()
                if self.skip(relative) or name.endswith(".tmp") or path.is_symlink():
                    continue
                with contextlib.suppress(FileNotFoundError):  # removed while we walk: not ours to copy
                    stat = path.stat()
                    found[relative] = (stat.st_size, stat.st_mtime_ns)
        return found

    def pull(self) -> int:
        """Make the local folder hold what the remote one does; returns the number of files copied."""
        remote = {k: v for k, v in self.remote.files().items() if not self.skip(k)}
        local = self.local_files()
        copied = 0
        # Parts before the tables compacted from them: a part merged away meanwhile is then already in its table.
        for relative in sorted(remote, key=lambda k: (not _is_part(k), k)):
            known = self._files.get(relative, {})
            if relative in local and known.get("remote") == list(remote[relative]) \
                    and known.get("local") == list(local[relative]):
                continue
            target = self.local / relative
            try:
                downloaded = self.remote.download(relative, target)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue  # a key both a file and a folder's prefix (object stores allow it): left out locally
            if downloaded:
                stat = target.stat()
                self._files[relative] = {"remote": list(remote[relative]), "local": [stat.st_size, stat.st_mtime_ns]}
                copied += 1
        for relative in set(local) - set(remote):
            (self.local / relative).unlink(missing_ok=True)
            self._files.pop(relative, None)
        self.local.mkdir(parents=True, exist_ok=True)
        self._save_state()
        return copied

    def push(self) -> int:
        """Make the remote folder hold what the local one does; returns the number of files uploaded."""
        local = self.local_files()
        changed = [k for k, stat in local.items() if self._files.get(k, {}).get("local") != list(stat)]
        changed.sort(key=lambda k: PurePosixPath(k).name in LAST_PUSHED)  # the markers of a finished stage last
        for relative in changed:
            path = self.local / relative
            try:
                if path.suffix == ".db":
                    with _sqlite_snapshot(path) as snapshot:
                        self.remote.upload(snapshot, relative)
                else:
                    self.remote.upload(path, relative)
            except FileNotFoundError:
                continue  # replaced or removed while we copied: the next push takes what is there then
            self._files[relative] = {"local": list(local[relative])}
        for relative in [k for k in self._files if k not in local]:
            self.remote.delete(relative)
            del self._files[relative]
        if changed:
            self._save_state()
        return len(changed)

    def forget_local(self, remote_files) -> None:
        """Take ``remote_files`` as copies of local files since changed: a push uploads every local file and
        deletes those of them the local folder does not hold."""
        for relative in remote_files:
            self._files[relative] = {"local": []}

    def remember_remote(self) -> None:
        """Record the remote stats of what was pushed, so that the next pull of this copy downloads nothing."""
        remote = self.remote.files()
        for relative, known in self._files.items():
            if relative in remote:
                known["remote"] = list(remote[relative])
        self._save_state()

    @contextlib.contextmanager
    def pushing(self, every_s: float = PUSH_EVERY_S, should_push: Callable[[], bool] = lambda: True) -> Iterator[None]:
        """Push every ``every_s`` seconds while the block runs, and once more at its end (an error in the block
        too: what finished is kept). A push that fails is said once and retried at the next period; the last one
        failing is an error."""
        stop = threading.Event()
        said: set[str] = set()

        def loop() -> None:
            while not stop.wait(every_s):
                if not should_push():
                    return
                try:
                    self.push()
                except Exception as exc:  # noqa: BLE001 - network errors of any filesystem: retried next period
                    if (line := _first_line(exc)) not in said:
                        said.add(line)
                        from automl import console

                        console.info(f"{self.remote.display}: could not copy the run there ({line}); retrying")

        thread = threading.Thread(target=loop, name="automl-mirror", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if should_push():
                try:
                    self.push()
                    self.remember_remote()
                except Exception as exc:  # noqa: BLE001
                    raise UserError(f"{self.remote.display}: could not copy the run there ({_first_line(exc)}); its "
                                    f"working copy {self.local} holds everything: run the command again with "
                                    "--resume, or copy it by hand") from None


def _is_part(relative: str) -> bool:
    return "-parts/" in relative


@contextlib.contextmanager
def _sqlite_snapshot(path: Path) -> Iterator[Path]:
    """A consistent copy of a SQLite database that another thread may be writing (SQLite's online backup)."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        source, target = sqlite3.connect(f"file:{path}?mode=ro", uri=True), sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        yield copy


class Lease:
    """One writer per run folder on object storage: a lease object, renewed while its holder works.

    Taking it: read the lease; refuse if someone else holds it (renewed within :data:`LEASE_TTL_S` by the store's
    clock, and not a process known dead on this host); write our own with a fresh nonce; wait
    :data:`LEASE_SETTLE_S`; read it back. The last writer wins and the others, seeing a foreign nonce, are refused.
    A writer whose check and write took longer than half the settle time starts over, so every competing write
    lands before anyone's read-back. Limits: this needs a store with strong read-after-write consistency (AWS S3,
    GCS, Azure, MinIO: yes); a holder paused longer than the lease's life (a stopped VM) may find, when it resumes,
    that another took over: it stops copying there and says so; clocks must agree to within seconds (the lease's
    age is the store's modification time against this machine's clock).
    """

    def __init__(self, location: Location, command: str):
        self.location, self.command = location, command
        self.nonce = uuid.uuid4().hex
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[dict | None, float | None]:
        from pyarrow import fs

        content = self.location.read_bytes(LEASE_NAME)
        if content is None:
            return None, None
        info = self.location.filesystem.get_file_info(self.location._key(LEASE_NAME))
        renewed = info.mtime.timestamp() if info.type == fs.FileType.File and info.mtime else None
        try:
            record = json.loads(content)
        except ValueError:
            record = None
        return (record if isinstance(record, dict) else {}), renewed

    def _write(self) -> None:
        record = holder_record(self.command) | {"nonce": self.nonce, "ttl_s": LEASE_TTL_S}
        self.location.write_bytes(LEASE_NAME, json.dumps(record).encode())

    def _held_by_other(self, record: dict | None, renewed: float | None) -> bool:
        if record is None or record.get("nonce") == self.nonce:
            return False
        if record.get("host") == socket.gethostname() and record.get("pid") and not alive_here(record):
            return False  # its holder died on this machine: no need to wait for the lease to run out
        return renewed is None or time.time() - renewed < float(record.get("ttl_s", LEASE_TTL_S))

    def _refuse(self, record: dict) -> RunLockedError:
        return RunLockedError(f"{self.location.display} is in use by {describe_holder(record)} (its lease "
                              f"{LEASE_NAME} there runs out {LEASE_TTL_S:.0f} s after its last renewal); wait for it "
                              "to finish or stop it")

    def acquire(self) -> None:
        while True:
            checked = time.monotonic()
            record, renewed = self._read()
            if self._held_by_other(record, renewed):
                raise self._refuse(record)
            self._write()
            if time.monotonic() - checked < LEASE_SETTLE_S / 2:
                break  # else a competitor may have checked and written meanwhile unseen: look again
        time.sleep(LEASE_SETTLE_S)
        record, _ = self._read()
        if not record or record.get("nonce") != self.nonce:
            raise self._refuse(record or {})
        self._thread = threading.Thread(target=self._renew, name="automl-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_TTL_S / 3):
            try:
                record, _ = self._read()
                if not record or record.get("nonce") != self.nonce:
                    self.lost.set()
                    from automl import console

                    console.info(f"{self.location.display}: {describe_holder(record)} took this run over; no "
                                 "longer copying to it")
                    return
                self._write()
            except Exception:  # noqa: BLE001 - a network blip: the next renewal tries again, well within the TTL
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with contextlib.suppress(Exception):
            record, _ = self._read()
            if record and record.get("nonce") == self.nonce:
                self.location.delete(LEASE_NAME)


def run_folder_skip(relative: str) -> bool:
    """What a run folder's mirror leaves alone: Tune's folders (Tune writes them to the URI itself), the local lock
    and the lease."""
    top = relative.split("/", 1)[0]
    return top in ("ray", ".lock", LEASE_NAME) or top.startswith("ray-")


@contextlib.contextmanager
def checked_out(location: Location, command: str) -> Iterator[Path]:
    """Hold the run folder at ``location`` for writing: lease, working copy pulled, pushed while the block runs and
    at its end; yields the working copy's path (what every stage reads and writes)."""
    local = working_copy(location, "run")
    lease = Lease(location, command)
    with run_lock(local / ".lock", command):  # two commands of this machine on one working copy
        lease.acquire()
        try:
            mirror = Mirror(local, location, run_folder_skip)
            mirror.pull()
            with mirror.pushing(should_push=lambda: not lease.lost.is_set()):
                yield local
        finally:
            lease.release()


def pulled(location: Location, purpose: str, skip: Callable[[str], bool] = _never) -> Path:
    """A local copy of the folder at ``location`` (a model folder, a results folder to view), brought up to date."""
    local = working_copy(location, purpose)
    if not location.exists():
        raise UserError(f"{location.display}: nothing there; check the URI")
    Mirror(local, location, skip).pull()
    return local


def view_skip(relative: str) -> bool:
    """What a view of results (the dashboard) does not copy: engines' state, model weights and probabilities."""
    parts = relative.split("/")
    return (run_folder_skip("/".join(parts[1:])) or parts[-1].endswith((".keras", ".npy", ".npz", ".db"))
            or "saved_model" in parts or "keras_tuner" in parts)


def kept_pulled(location: Location, every_s: float, stop: threading.Event | None = None) -> Path:
    """A view of the results at ``location`` (every run below it, without :func:`view_skip`'s files), pulled now
    and again every ``every_s`` seconds by a background thread, until ``stop`` is set or the process ends."""
    local = working_copy(location, "view")
    mirror = Mirror(local, location, view_skip)
    mirror.pull()
    stop = stop or threading.Event()

    def loop() -> None:
        said: set[str] = set()
        while not stop.wait(every_s):
            try:
                mirror.pull()
            except Exception as exc:  # noqa: BLE001 - network errors: the view stays as it was until the next pull
                if (line := _first_line(exc)) not in said:
                    said.add(line)
                    from automl import console

                    console.info(f"{location.display}: could not read the results there ({line}); retrying")

    threading.Thread(target=loop, name="automl-view", daemon=True).start()
    return local


def check_remote_output(location: Location, overwrite: bool = False) -> None:
    """The rule of :func:`automl.files.check_output_dir`, at a URI: a folder there is replaced only if it is empty or
    this product wrote it (its :data:`~automl.files.MARKER`), unless ``overwrite``."""
    from pyarrow import fs

    if location.filesystem.get_file_info(location.path).type == fs.FileType.File:
        raise UserError(f"{location.display}: exists and is not a folder; choose another --out")
    names = {relative.split("/", 1)[0] for relative in location.files()}
    if overwrite or not names or MARKER in names:
        return
    shown = ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise UserError(f"{location.display}: holds files this command did not write ({shown}); choose another --out, "
                    "or pass --overwrite to replace the whole folder")


def push_folder(local: Path, location: Location) -> None:
    """Copy a finished local folder (an evaluation, an exported model) to ``location``, replacing what is there."""
    mirror = Mirror(local, location, keep_state=False)
    mirror.forget_local(location.files())  # every file there counts as pushed: the stale ones are deleted
    mirror.push()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _shown(uri: str) -> str:
    return uri.partition("?")[0]
