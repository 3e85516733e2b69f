"""`automl serve` under load on 127.0.0.1, beside in-process `automl predict` on the same images.

Serves `results/reference/model` with the real command (embedded Ray, Serve's proxy and controller, one replica by
default) and measures, on the 202 real 150x112 HAM10000 JPEGs of `../shared/data/ham10000_sample_150` (read, never
copied):

1. in-process prediction (`automl.predict.classify_files`' code: decode + the exported graph, batches of 64): images/s;
2. 1, 8 and 32 concurrent clients (threads, one keep-alive connection each, one image per request; then 32 clients
   sending 8 images per multipart request), each level a fixed number of requests within a time limit: requests/s,
   p50/p99 latency, errors, and the CPU each process took (client, Serve's proxy, controller, the replica, Ray's own
   processes, everything else on the machine), from /proc;
3. each bad upload: its status and message, and whether the next good request was answered;
4. the replica killed (SIGKILL) under 8 clients: time until a request is served again, requests failed, slowest
   request (none may hang: the client's timeout is far above Serve's request timeout).

Writes `results/benchmarks/serve_load.md` and `serve_load.json`. About 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_OUT, REPO, check_idle, markdown_table, print_table, stop_child, write_result,  # noqa: E402
                     write_text_result)

SAMPLE = REPO.parent / "shared" / "data" / "ham10000_sample_150" / "HAM10000_images"
MODEL = REPO / "results" / "reference" / "model"
# (concurrent clients, requests, images per request): one image per request as the goal counts, then a client that
# sends 8 images per request (multipart), for whom Serve's cost per request is spread over 8 images.
LEVELS = ((1, 300, 1), (8, 1000, 1), (32, 2000, 1), (32, 250, 8))
CLIENT_TIMEOUT_S = 120.0  # far above the server's request timeout: a request this slow counts as hung
ROLES = (("ServeReplica", "replica"), ("ProxyActor", "proxy"), ("ServeController", "controller"),
         ("-m automl serve", "serve driver"), ("raylet", "ray system"), ("gcs_server", "ray system"),
         ("ray", "ray system"))


# ---- processes and their CPU -------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents[int(entry.name)] = stat[0]
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def role(pid: int, server_pid: int) -> str:
    if pid == os.getpid():
        return "client (this process)"
    line = _cmdline(pid)
    if pid == server_pid:
        return "serve driver"
    return next((name for key, name in ROLES if key in line), "other")


def cpu_by_role(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by each role (the client, and every process of the server's tree), and by the whole
    machine (other users' work included) as ``machine``."""
    used: dict[str, float] = {"machine": machine_busy_s()}
    for pid in [os.getpid(), *tree(server_pid)]:
        if stat := _stat(pid):
            used[role(pid, server_pid)] = used.get(role(pid, server_pid), 0.0) + stat[1]
    return used


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def replica_pid(server_pid: int) -> int | None:
    return next((pid for pid in tree(server_pid) if "ServeReplica" in _cmdline(pid)), None)


# ---- the server ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "automl", "serve", str(MODEL), "--port", str(port), *extra]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, env=os.environ | {"RAY_ADDRESS": "local"})
    started = time.monotonic()
    while True:
        line = server.stdout.readline()
        if not line and server.poll() is not None:
            raise SystemExit(f"automl serve ended before serving (exit {server.returncode})")
        print(line, end="", flush=True)
        if line.startswith("serving "):
            print(f"server up in {time.monotonic() - started:.1f} s", flush=True)
            threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()  # drain its output
            return server


class Client:
    """One keep-alive connection to the server; a new one after any failure."""

    def __init__(self, port: int):
        self.port = port
        self.connection = None

    def post(self, body: bytes, content_type: str = "image/jpeg", path: str = "/predict") -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT_S)
        try:
            self.connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = self.connection.getresponse()
            return response.status, response.read()
        except Exception:
            self.connection.close()
            self.connection = None
            raise


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, requests: int, time_limit_s: float,
         stop: threading.Event | None = None) -> list[tuple[float, float, int | str]]:
    """``requests`` requests (or until ``time_limit_s``, or ``stop``) from ``clients`` threads: (start, seconds,
    status or exception name) each, start relative to the call."""
    records: list[tuple[float, float, int | str]] = []
    counter = iter(range(requests))
    lock = threading.Lock()
    began = time.monotonic()

    def work() -> None:
        client = Client(port)
        while time.monotonic() - began < time_limit_s and not (stop and stop.is_set()):
            with lock:
                i = next(counter, None)
            if i is None:
                return
            sent = time.monotonic()
            try:
                status, _ = client.post(*bodies[i % len(bodies)])
            except Exception as exc:  # noqa: BLE001 - a failed request is a record, not the end of the run
                status = type(exc).__name__
            with lock:
                records.append((sent - began, time.monotonic() - sent, status))

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


# ---- the bad uploads -------------------------------------------------------------------------------------------

def bad_inputs(good: bytes, max_upload_mb: float, max_images: int) -> dict[str, tuple[bytes, str]]:
    png = bytearray(_png(8, 8))
    png[16:24] = (30_000).to_bytes(4, "big") * 2  # IHDR: 30,000 x 30,000 pixels
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    many = [(f"{i}.jpg", good) for i in range(max_images + 1)]
    return {
        "empty body": (b"", "image/jpeg"),
        "not an image (text)": (b"hello, world\n" * 20, "image/jpeg"),
        "truncated JPEG (first half)": (good[: len(good) // 2], "image/jpeg"),
        "decompression bomb (PNG header 30,000 x 30,000)": (bytes(png), "image/png"),
        f"upload over the size limit ({max_upload_mb:g} MiB + 1 byte)":
            (b"\xff" * (int(max_upload_mb * 1024 * 1024) + 1), "image/jpeg"),
        "wrong content type (application/json)": (b'{"image": "x"}', "application/json"),
        f"too many images ({max_images + 1} parts)": multipart(many),
        "multipart without its closing boundary": (multipart([("a.jpg", good)])[0][:-12],
                                                   multipart([])[1]),
    }


def _png(height: int, width: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(files: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n\r\n'
                    .encode() + data + b"\r\n" for name, data in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ---- the measurements ------------------------------------------------------------------------------------------

def in_process(files: list[Path], repeats: int) -> dict:
    """`automl predict`'s own code in this process: decode + the exported graph in batches of 64, best of repeats."""
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.predict import classify_with, load_model, model_classes

    classes = model_classes(MODEL)
    model = load_model(MODEL, len(classes))
    classify_with(model, files[:64], classes)  # warm-up: the graph's first call traces it
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        classify_with(model, files, classes, batch_size=64)
        seconds.append(time.perf_counter() - began)
    best = min(seconds)
    return {"images": len(files), "repeats": repeats, "best_s": best, "images_per_s": len(files) / best}


def summarize(records, wall_s: float) -> dict:
    latencies = np.array([seconds for _, seconds, _ in records])
    ok = sum(status == 200 for _, _, status in records)
    return {"requests": len(records), "ok": ok, "errors": len(records) - ok, "wall_s": wall_s,
            "rps": ok / wall_s, "p50_s": float(np.percentile(latencies, 50)),
            "p99_s": float(np.percentile(latencies, 99)), "max_s": float(latencies.max())}


def replica_kill(port: int, server_pid: int, bodies: list[tuple[bytes, str]], clients: int = 8,
                 kill_after_s: float = 3.0, after_s: float = 40.0) -> dict:
    stop = threading.Event()
    result: list = []
    runner = threading.Thread(target=lambda: result.extend(load(port, bodies, clients, 10**9, 10**9, stop)))
    began = time.monotonic()
    runner.start()
    time.sleep(kill_after_s)
    victim = replica_pid(server_pid)
    killed_at = time.monotonic() - began
    os.kill(victim, signal.SIGKILL)
    time.sleep(after_s)
    stop.set()
    runner.join()
    after = [(start, seconds, status) for start, seconds, status in result if start + seconds >= killed_at]
    failed = [(start, seconds, status) for start, seconds, status in after if status != 200]
    served_again = [start + seconds for start, seconds, status in after if status == 200 and start > killed_at]
    first_ok = min(served_again, default=float("nan"))
    new_replica = replica_pid(server_pid)
    return {"clients": clients, "killed_pid": victim, "new_replica_pid": new_replica,
            "seconds_until_served_again": first_ok - killed_at,
            "requests_in_flight_or_after": len(after), "failed": len(failed),
            "failed_statuses": sorted({str(status) for _, _, status in failed}),
            "slowest_failed_s": max((seconds for _, seconds, _ in failed), default=0.0),
            "slowest_request_s": max((seconds for _, seconds, _ in after), default=0.0),
            "hung": sum(seconds >= CLIENT_TIMEOUT_S for _, seconds, _ in after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per concurrency level")
    parser.add_argument("--repeats", type=int, default=3, help="in-process passes over the images (best counts)")
    parser.add_argument("--serve-args", default="", help="extra automl serve flags, e.g. '--max-batch-size 64'")
    args = parser.parse_args()
    load_at_start = check_idle()
    files = sorted(SAMPLE.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no images in {SAMPLE}: see ../shared/data/README.md")
    images = [path.read_bytes() for path in files]
    print(f"{len(files)} JPEGs of {SAMPLE} ({np.mean([len(b) for b in images]) / 1024:.1f} KiB on average)")

    # Other work on the machine comes and goes: in-process is measured before the server starts and after it stops,
    # and the faster of the two is the reference (the ratio errs on the low side).
    local_before = in_process(files, args.repeats)
    print(f"in-process predict: {local_before['images_per_s']:.1f} images/s (best of {args.repeats} passes)",
          flush=True)

    port = free_port()
    server = start_server(port, args.serve_args.split())
    try:
        Client(port).post(images[0])  # warm-up: the replica's first call traces the graph
        singles = [(image, "image/jpeg") for image in images]
        load(port, singles, 8, 200, 30)
        levels = {}
        for clients, requests, per_request in LEVELS:
            bodies = singles if per_request == 1 else [
                multipart([(f"{i + k}.jpg", images[(i + k) % len(images)]) for k in range(per_request)])
                for i in range(0, len(images), per_request)]
            before, began = cpu_by_role(server.pid), time.monotonic()
            records = load(port, bodies, clients, requests, args.time_limit)
            wall = time.monotonic() - began
            after = cpu_by_role(server.pid)
            label = f"{clients}" if per_request == 1 else f"{clients} x {per_request} images (multipart)"
            levels[label] = summarize(records, wall) | {
                "images_per_request": per_request,
                "cpu_share": {name: (after.get(name, 0) - before.get(name, 0)) / wall for name in after}}
            level = levels[label]
            print(f"{label} clients: {level['rps']:.1f} req/s, p50 {level['p50_s'] * 1000:.0f} ms, "
                  f"p99 {level['p99_s'] * 1000:.0f} ms, errors {level['errors']}", flush=True)

        bad = []
        client = Client(port)
        for case, (body, content_type) in bad_inputs(images[0], 20.0, 16).items():
            try:
                status, answer = client.post(body, content_type)
                message = json.loads(answer)["error"] if status != 200 else "(answered 200)"
            except Exception as exc:  # noqa: BLE001
                status, message = type(exc).__name__, str(exc)
            next_status = Client(port).post(images[1])[0]
            bad.append({"case": case, "status": status, "message": message, "next_good_request": next_status})
            print(f"{case}: {status} {message} -> next good request {next_status}", flush=True)

        kill = replica_kill(port, server.pid, singles)
        print(f"replica killed: {kill}", flush=True)
    finally:
        stop_child(server, timeout_s=60)
    local_after = in_process(files, args.repeats)
    print(f"in-process predict again: {local_after['images_per_s']:.1f} images/s", flush=True)
    local = max(local_before, local_after, key=lambda run: run["images_per_s"])

    ratio = levels["32"]["rps"] / local["images_per_s"]
    goal = (ratio >= 0.6, levels["32"]["p99_s"] < 1.5, levels["32"]["errors"] == 0)
    write_result(args.out / "serve_load.json", {"model": str(MODEL.relative_to(REPO)), "images": len(files),
                                                 "in_process": local, "in_process_before": local_before,
                                                 "in_process_after": local_after, "levels": levels, "bad_inputs": bad,
                                                 "replica_kill": kill, "ratio_32": ratio,
                                                 "load_average_at_start": load_at_start,
                                                 "serve_args": args.serve_args})
    roles = sorted({name for level in levels.values() for name in level["cpu_share"]} - {"machine"})
    for level in levels.values():  # what the rest of the machine (other users' processes) took meanwhile
        share = level["cpu_share"]
        share["other processes"] = share.pop("machine") - sum(share.values())
    load_rows = [[clients, level["requests"], f"{level['rps']:.1f}",
                  f"{level['rps'] * level['images_per_request']:.1f}", f"{level['p50_s'] * 1000:.0f}",
                  f"{level['p99_s'] * 1000:.0f}", level["errors"],
                  f"{level['rps'] * level['images_per_request'] / local['images_per_s']:.2f}"]
                 for clients, level in levels.items()]
    load_cols = ["clients", "requests", "requests/s", "images/s", "p50 ms", "p99 ms", "errors",
                 "ratio to in-process (images/s)"]
    cpu_rows = [[clients, *(f"{level['cpu_share'].get(name, 0) * 100:.0f}%" for name in roles),
                 f"{sum(v for k, v in level['cpu_share'].items() if k != 'other processes') * 100:.0f}%",
                 f"{level['cpu_share']['other processes'] * 100:.0f}%"] for clients, level in levels.items()]
    cpu_cols = ["clients", *roles, "ours in all", "other processes on the machine"]
    bad_rows = [[b["case"], b["status"], b["message"], b["next_good_request"]] for b in bad]
    bad_cols = ["case", "status", "message", "next good request"]
    print_table("load", load_cols, load_rows)
    print_table("CPU per process (100% = one core)", cpu_cols, cpu_rows)
    print_table("bad input", bad_cols, bad_rows, left=["message"])
    text = "\n".join([
        "# automl serve under load (`benchmarks/serve_load.py`)", "",
        f"Model `{MODEL.relative_to(REPO)}` (28 px, 4-member ResNet ensemble, dihedral TTA) served by `automl serve` "
        f"on 127.0.0.1 (embedded Ray, one replica{', ' + args.serve_args if args.serve_args else ''}); "
        f"{len(files)} real 150x112 HAM10000 JPEGs, one per request; each level at most its request count and "
        f"{args.time_limit:g} s. In-process: `automl predict`'s code (decode + graph, batches of 64) in one "
        f"process, best of {args.repeats} passes, before the server started and after it stopped: "
        f"{local_before['images_per_s']:.1f} and {local_after['images_per_s']:.1f} images/s; the ratios use the "
        f"faster, **{local['images_per_s']:.1f} images/s**. "
        f"Load average at start {load_at_start[0]:.2f}.", "",
        markdown_table(load_cols, load_rows, title="Load"),
        f"Goal at 32 clients, one image per request: ratio >= 0.6 ({'met' if goal[0] else 'not met'}: "
        f"{ratio:.2f}), p99 < 1.5 s "
        f"({'met' if goal[1] else 'not met'}), 0 errors ({'met' if goal[2] else 'not met'}).", "",
        markdown_table(cpu_cols, cpu_rows, title="CPU share per process during each level (100% = one core)",
                       caption="client: this script's threads (and its idle TensorFlow); ray system: raylet, GCS "
                               "and Ray's other processes; other processes: everything else on the machine "
                               "(other users' work), from /proc/stat; 2 cores = 200%."),
        markdown_table(bad_cols, bad_rows, title="Bad input (each then followed by a good request)",
                       left=["message"]),
        "**Replica killed (SIGKILL) under 8 clients**", "",
        f"Served again {kill['seconds_until_served_again']:.1f} s after the kill (the new replica imports "
        f"TensorFlow and loads the model); {kill['failed']} of {kill['requests_in_flight_or_after']} requests in "
        f"flight or sent after it failed ({', '.join(kill['failed_statuses']) or 'none'}), the slowest failure "
        f"after {kill['slowest_failed_s']:.2f} s; slowest request {kill['slowest_request_s']:.1f} s; "
        f"{kill['hung']} hung (>= {CLIENT_TIMEOUT_S:g} s).", ""])
    write_text_result(args.out / "serve_load.md", text)
    print(f"wrote {args.out / 'serve_load.md'}")


if __name__ == "__main__":
    main()
