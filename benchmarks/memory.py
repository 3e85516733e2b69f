"""Memory of the data path at real sizes: ``automl train`` and one search trial, this checkout against another.

For each image size, on the 10,015 images of ``ham10000_200x150``, with a small fixed CNN (2 blocks of 8 filters, one
epoch):

- ``automl train --epochs 1``: the process's peak RSS (the kernel's high-water mark) and its peak USS and PSS
  (sampled every 0.2 s from ``/proc/PID/smaps_rollup``);
- ``automl search`` of one trial of one epoch on embedded Ray: the driver's and the trial worker's peak USS, PSS and
  RSS (RSS counts the object store's and the memory map's shared pages that a process touches, USS only what is
  its own: what must not grow with the dataset).

The decode cache is warm for every row (it is decoded once per size before the first row), except the rows marked
cold, which decode into an empty cache. ``--code DIR`` runs another checkout of the project (e.g. a ``git worktree``
of the commit before the data path changed) the same way, for the before/after table::

    git worktree add /tmp/before ee449b8
    python benchmarks/memory.py --code /tmp/before --label before
    python benchmarks/memory.py --label after

Each label's rows are one JSON line each in ``results/benchmarks/runs/memory/rows.jsonl`` (resumable: a row done is not
measured again); the tables of every label measured so far go to ``results/benchmarks/memory.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (DEFAULT_OUT, LOCAL_RAY, REPO, RUNS, append_row, markdown_table, print_table,  # noqa: E402
                     read_rows, write_result, write_text_result)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000_200x150"
SIZES = ("28x28", "64x64", "128x128", "112x150")
SPEC = """
name: memory_probe
data: {image_size: 28}
hyperparameters:
  conv_blocks: 2
  convs_per_block: 1
  base_filters: 8
  filter_growth: 1.0
  dense_units: 32
  batch_size: 64
  learning_rate: 1.0e-3
"""
SEARCHED = SPEC.replace("  learning_rate: 1.0e-3", "  learning_rate: {float: [1.0e-3, 2.0e-3]}") + """
search: {searcher: random, scheduler: none, num_samples: 1, max_epochs: 1, grace_period: 1, max_concurrent: 1}
"""
MB = 1024 * 1024


def memory(pid: int) -> dict[str, int] | None:
    """RSS, PSS, USS (private clean + dirty) and anonymous memory of a process in bytes, or None when it has gone.

    USS counts the pages of a memory-mapped file that no other process maps as this one's own (private clean):
    the decode cache's pages, when one process alone reads them. Anonymous memory is what the process holds that is
    no file's: a copy of the images would be there, the memory-mapped cache is not."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()[1:] if line.endswith("kB")}
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), "anon": fields.get("Anonymous", 0)}


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from the parent ids in ``/proc/PID/stat``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Sampler(threading.Thread):
    """Peak memory of a process tree every ``period`` seconds, by role: the root (``driver``) and each descendant
    whose command line names the trial's trainable (``trial``)."""

    def __init__(self, root: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.period, self.peaks, self.done = root, period, {}, threading.Event()

    def role(self, pid: int) -> str | None:
        if pid == self.root:
            return "driver"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
        return "trial" if command.startswith("ray::") and "Trainable" in command else None

    def run(self) -> None:
        while not self.done.is_set():
            for pid in [self.root, *descendants(self.root)]:
                role, used = self.role(pid), memory(pid)
                if role and used:
                    peak = self.peaks.setdefault(role, {k: 0 for k in used})
                    for key, value in used.items():
                        peak[key] = max(peak[key], value)
            time.sleep(self.period)


def measure(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``command``; its peak RSS (wait4's high-water mark), the sampled peaks by role, seconds and exit code."""
    started = time.monotonic()
    child = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(child.pid)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    sampler.done.set()
    sampler.join()
    error = child.stderr.read().decode(errors="replace").strip().splitlines()[-3:] if status else []
    return {"max_rss": usage.ru_maxrss * 1024, "peaks": sampler.peaks, "seconds": round(time.monotonic() - started, 1),
            "exit": os.waitstatus_to_exitcode(status), "error": error}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose automl package runs")
    parser.add_argument("--label", default="after", help="what this checkout is in the tables (before, after)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--parts", nargs="+", default=["train", "trial", "cold"], choices=["train", "trial", "cold"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)

    work = args.out / RUNS / "memory"
    work.mkdir(parents=True, exist_ok=True)
    rows_file = work / "rows.jsonl"
    done = {(r["label"], r["part"], r["size"]) for r in read_rows(rows_file)}
    spec_file, searched_file = work / "probe.yaml", work / "probe_search.yaml"
    spec_file.write_text(SPEC)
    searched_file.write_text(SEARCHED)
    cache = work / "cache"  # warm, shared by every label: the same decode either way
    env = os.environ | LOCAL_RAY | {"PYTHONPATH": str(args.code.resolve()), "AUTOML_CACHE_DIR": str(cache)}
    automl = [sys.executable, "-m", "automl"]
    for part in [] if args.report_only else args.parts:
        for size in args.sizes if part != "cold" else ["128x128"]:
            if (args.label, part, size) in done:
                continue
            with tempfile.TemporaryDirectory(prefix="memory-") as scratch:
                run_env = env | ({"AUTOML_CACHE_DIR": scratch} if part == "cold" else {})
                if part in ("train", "cold"):
                    command = [*automl, "train", str(spec_file), "--data", str(args.data), "--image-size", size,
                               "--epochs", "1", "--out", f"{scratch}/out"]
                else:
                    command = [*automl, "search", str(searched_file), "--data", str(args.data), "--image-size", size,
                               "--name", "probe", "--results", scratch]
                result = measure(command, run_env, args.code)
            row = {"label": args.label, "part": part, "size": size, "code": str(args.code), **result}
            if result["exit"] != 0:
                print(f"{args.label} {part} {size}: exit {result['exit']}: {' | '.join(result['error'])}")
                continue
            append_row(rows_file, row)
            print(f"{args.label} {part} {size}: max RSS {row['max_rss'] / MB:,.0f} MB, "
                  + ", ".join(f"{role} USS {p['uss'] / MB:,.0f} PSS {p['pss'] / MB:,.0f} RSS {p['rss'] / MB:,.0f} MB"
                              for role, p in result["peaks"].items()) + f" ({result['seconds']:.0f} s)")
    report(read_rows(rows_file), args)


def decoded_mb(size: str, images: int = 10015) -> float:
    height, width = map(int, size.split("x"))
    return images * height * width * 3 / MB


def report(rows: list[dict], args) -> None:
    def mb(value) -> str:
        return "-" if value is None else f"{value / MB:,.0f}"

    columns = ["label", "part", "size", "decoded set MB", "peak RSS MB (kernel)", "driver anon", "driver USS",
               "driver PSS", "trial anon", "trial USS", "trial PSS", "trial RSS", "seconds"]
    table = []
    for row in sorted(rows, key=lambda r: (r["part"], r["label"] != "before", SIZES.index(r["size"])
                                           if r["size"] in SIZES else 9)):
        peaks = row["peaks"]
        driver, trial = peaks.get("driver", {}), peaks.get("trial", {})
        table.append([row["label"], row["part"], row["size"], f"{decoded_mb(row['size']):,.0f}", mb(row["max_rss"]),
                      mb(driver.get("anon")), mb(driver.get("uss")), mb(driver.get("pss")), mb(trial.get("anon")),
                      mb(trial.get("uss")), mb(trial.get("pss")), mb(trial.get("rss")), f"{row['seconds']:.0f}"])
    growth = []
    for label in sorted({r["label"] for r in rows}):
        train = {r["size"]: r for r in rows if r["label"] == label and r["part"] == "train"}
        if "28x28" in train and "128x128" in train:
            extra = (train["128x128"]["max_rss"] - train["28x28"]["max_rss"]) / MB
            data = decoded_mb("128x128") - decoded_mb("28x28")
            growth.append([label, f"{extra:,.0f}", f"{data:,.0f}", f"{extra / data:.2f}"])
    title = "Memory of automl train (one epoch) and of one search trial, 10,015 images, MB"
    caption = ("train: automl train; trial: automl search, 1 trial of 1 epoch (driver = the search process, trial = "
               "its Ray worker); cold: automl train decoding into an empty cache. Peaks over the run, sampled every "
               "0.1 s. anon = anonymous memory, the process's own heap (a copy of the images lands here, the "
               "memory-mapped cache does not); USS = pages no other process maps, including the cache file's pages "
               "that only this process has read (page cache, shared as soon as a second trial reads them); PSS "
               "shares each shared page among its users; RSS counts shared pages whole.")
    print_table(title, columns, table, caption=caption, left=("label", "part"))
    growth_columns = ["label", "peak RSS 128 px - 28 px (MB)", "decoded set 128 - 28 (MB)", "times the decoded set"]
    print_table("automl train's peak RSS from 28 to 128 px (goal: at most 1.5 times the decoded set)",
                growth_columns, growth, left=("label",))
    text = markdown_table(columns, table, title=title, caption=caption) + "\n" + markdown_table(
        growth_columns, growth, title="automl train's peak RSS from 28 to 128 px (goal: at most 1.5x the decoded set)")
    write_text_result(args.out / "memory.md", text)
    write_result(args.out / "memory.json", {"rows": rows, "growth": growth})


if __name__ == "__main__":
    main()
