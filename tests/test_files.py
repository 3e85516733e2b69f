"""Atomic, durable writes and staged folders that never delete what the product did not write."""

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from automl import files
from automl.errors import UserError
from automl.files import MARKER, OutputDirError, atomic_write, check_output_dir, staged_dir, write_json


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_content_permissions_and_durability(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):  # the real fsync, noting what was flushed
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "sub" / "a.txt", "text")
    assert (tmp_path / "sub" / "a.txt").read_text() == "text"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "sub" / "a.txt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    # The temporary file is flushed before the rename, the folder after it.
    assert Path(synced[0]).name.startswith(".a.txt.") and synced[1] == str(tmp_path / "sub")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"called"))
    write_json(tmp_path / "d.json", {"x": float("nan")})
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01" and (tmp_path / "c.bin").read_bytes() == b"called"
    assert (tmp_path / "d.json").read_text() == '{\n  "x": null\n}\n'


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_write(tmp_path / "a.txt", "old")

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", half_then_fail)
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_staged_dir_writes_a_marked_folder_and_replaces_its_own(tmp_path):
    out = tmp_path / "model"
    with staged_dir(out) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".model.")
        (stage / "a.txt").write_text("one")
        (stage / "old_only.txt").write_text("x")
    assert sorted(os.listdir(out)) == [MARKER, "a.txt", "old_only.txt"]
    with staged_dir(out) as stage:  # marked: replaced although the new stage lacks old_only.txt
        (stage / "a.txt").write_text("two")
    assert sorted(os.listdir(out)) == [MARKER, "a.txt"] and (out / "a.txt").read_text() == "two"
    assert hidden(tmp_path) == []


def test_staged_dir_replaces_a_legacy_folder_holding_only_names_it_rewrites(tmp_path):
    out = tmp_path / "model"  # as results/reference/model: written before the marker existed
    (out / "saved_model").mkdir(parents=True)
    (out / "model.keras").write_text("old")
    assert check_output_dir(out) == out == check_output_dir(out, expected=["model.keras", "saved_model"])
    with pytest.raises(OutputDirError, match="saved_model"):
        check_output_dir(out, expected=["model.keras"])
    with staged_dir(out) as stage:
        (stage / "saved_model").mkdir()
        (stage / "model.keras").write_text("new")
        (stage / "model_card.json").write_text("{}")
    assert (out / "model.keras").read_text() == "new" and (out / MARKER).is_file()
    assert check_output_dir(out) == out  # now marked


def test_staged_dir_refuses_a_user_folder_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    ran = False
    with pytest.raises(OutputDirError, match=r"mine: exists and holds files this command did not write \(thesis.tex\)"
                       r".*--out.*--overwrite"), staged_dir(out):
        ran = True
    assert not ran and (out / "thesis.tex").read_text() == "precious"
    assert issubclass(OutputDirError, UserError) and hidden(tmp_path) == []
    with pytest.raises(OutputDirError, match="thesis.tex"):
        check_output_dir(out)
    assert check_output_dir(out, expected=["thesis.tex", "model.keras"]) == out
    with staged_dir(out, overwrite=True) as stage:
        (stage / "model.keras").write_text("new")
    assert sorted(os.listdir(out)) == [MARKER, "model.keras"]


def test_staged_dir_refuses_a_legacy_folder_holding_more_than_it_rewrites(tmp_path):
    out = tmp_path / "model"  # names a train run writes, and an export about to write only one of them
    out.mkdir()
    (out / "model.keras").write_text("old")
    (out / "history.csv").write_text("epochs")
    with pytest.raises(OutputDirError, match=r"\(history.csv\)"), staged_dir(out) as stage:
        (stage / "model.keras").write_text("new")
    assert (out / "model.keras").read_text() == "old" and (out / "history.csv").is_file()
    assert hidden(tmp_path) == []


def test_failure_inside_the_block_keeps_the_old_folder_and_leaves_nothing_hidden(tmp_path):
    out = tmp_path / "run"
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("old")
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), staged_dir(out) as stage:
            (stage / "a.txt").write_text("half")
            raise error()
        assert (out / "a.txt").read_text() == "old" and hidden(tmp_path) == []


def test_a_stage_left_by_a_killed_command_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "retrain"
    killed = ("import os, signal, sys; from pathlib import Path; from automl.files import staged_dir\n"
              "with staged_dir(Path(sys.argv[1])) as stage:\n"
              "    (stage / 'member.keras').write_bytes(b'x' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs")
    assert subprocess.run([sys.executable, "-c", killed, str(out)]).returncode == -signal.SIGKILL
    [abandoned] = hidden(tmp_path)
    # Stages that may still be written: this (running) process's, and one named by another machine.
    running = tmp_path / f".retrain.{socket.gethostname()}-{os.getpid()}-abc.partial"
    elsewhere = tmp_path / ".retrain.other-host-1-abc.partial"
    running.mkdir()
    elsewhere.mkdir()
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("new")
    assert hidden(tmp_path) == sorted([running.name, elsewhere.name])  # the abandoned stage is gone
    assert (out / "a.txt").read_text() == "new"


def test_output_paths_are_resolved_and_the_working_folder_is_never_replaced(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", "./", str(work), str(tmp_path) + "/"):
        with pytest.raises(OutputDirError, match="current folder"):
            check_output_dir(out, overwrite=True)
    with pytest.raises(OutputDirError, match="current folder"), staged_dir(Path(".")):
        pass
    assert os.listdir(work) == []  # no hidden .partial folder left behind
    with pytest.raises(OutputDirError, match="filesystem root"):
        check_output_dir("/", overwrite=True)
    (work / "file").write_text("x")
    with pytest.raises(OutputDirError, match="file: exists and is not a folder"):
        check_output_dir("file", overwrite=True)
    with staged_dir("new/") as stage:  # a trailing slash names the folder itself
        (stage / "a").write_text("x")
    assert (work / "new" / "a").is_file()
    assert check_output_dir("sub/../new") == work / "new"


def test_swap_is_one_atomic_exchange_on_linux_and_falls_back_elsewhere(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").touch()
    if files._renameat2() is None:
        pytest.skip("no renameat2 in this C library")
    assert files._exchange(a, b) and os.listdir(b) == ["from_a"] and os.listdir(a) == []
    monkeypatch.setattr(files, "_exchange", lambda *_: False)  # what a system without renameat2 does
    out = tmp_path / "out"
    for content in ("one", "two"):
        with staged_dir(out) as stage:
            (stage / "x").write_text(content)
    assert (out / "x").read_text() == "two" and hidden(tmp_path) == []
