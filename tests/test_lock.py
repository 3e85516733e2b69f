"""One writer per run folder: refused at once while another process holds the lock, free once it is gone."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from automl.errors import UserError
from automl.lock import LOCK_FILE, RunLockedError, holder, run_lock

HOLD = """
import sys
from pathlib import Path
from automl.lock import run_lock
with run_lock(Path(sys.argv[1]), "automl search spec.yaml --name x"):
    print("held", flush=True)
    sys.stdin.read()
"""


def start_holder(lock_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_at_once_with_who_holds_it(tmp_path):
    lock_path = tmp_path / "run" / LOCK_FILE
    proc = start_holder(lock_path)
    try:
        start = time.monotonic()
        with pytest.raises(RunLockedError) as refused, run_lock(lock_path, "automl retrain"):
            pass
        assert time.monotonic() - start < 0.5
        message = str(refused.value)
        assert message.startswith(f"{tmp_path / 'run'} is in use by pid {proc.pid} on host {socket.gethostname()} "
                                  "(automl search spec.yaml --name x, since ")
        assert message.endswith("; wait for it to finish or stop it") and isinstance(refused.value, UserError)
        assert holder(lock_path)["pid"] == proc.pid
    finally:
        proc.communicate("")  # the holder leaves its block normally
    assert proc.returncode == 0 and holder(lock_path) is None
    with run_lock(lock_path, "automl retrain") as held:
        assert holder(held)["command"] == "automl retrain"


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path, capsys):
    lock_path = tmp_path / LOCK_FILE
    proc = start_holder(lock_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(lock_path.read_text())["pid"] == proc.pid  # the record outlives its holder, the flock not
    assert holder(lock_path) is None
    with run_lock(lock_path, "automl search --resume"):
        assert holder(lock_path)["pid"] == os.getpid()
    assert f"taking over the lock of pid {proc.pid}" in capsys.readouterr().err


def test_the_lock_is_released_on_exceptions_and_interrupts(tmp_path):
    lock_path = tmp_path / LOCK_FILE
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), run_lock(lock_path, "automl export"):
            with pytest.raises(RunLockedError), run_lock(lock_path, "again"):  # not re-entrant, even in-process
                pass
            raise error()
        assert holder(lock_path) is None and lock_path.read_text() == ""
    with run_lock(lock_path, "automl export"):
        pass


def test_an_unusable_lock_path_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot open the lock file"), run_lock(tmp_path / "file" / LOCK_FILE, "x"):
        pass


def test_a_live_holder_in_the_record_is_refused_even_where_flock_is_ignored(tmp_path, capsys):
    """What a filesystem without working locks looks like: the flock is granted, the record names a live writer."""
    lock_path = tmp_path / LOCK_FILE
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "command": "automl search",
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() + 1))}
        lock_path.write_text(json.dumps(record))
        with pytest.raises(RunLockedError, match=f"in use by pid {sleeper.pid}"), run_lock(lock_path, "x"):
            pass
        # A record older than the process with that pid is a dead holder's; the pid was only reused.
        lock_path.write_text(json.dumps(record | {"since": "2000-01-01T00:00:00+00:00"}))
        with run_lock(lock_path, "x"):
            pass
        assert "taking over the lock" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
