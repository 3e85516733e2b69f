"""Throughput: what running a candidate as a Ray Tune trial costs, and how fast data and searches go on this machine.

    python benchmarks/throughput.py                     # the full run, about 10 minutes on 2 cores
    python benchmarks/throughput.py --epochs 1 --startup-trials 2 --search-trials 2 --search-epochs 1 \\
        --out /tmp/bench-smoke                          # a smoke test, a few minutes
    python benchmarks/throughput.py --image-size 128 --data ../shared/data/ham10000_200x150 \\
        --skip startup,concurrency                      # at real resolution: plain fit against a Tune trial

Five parts (``--skip data,plain,tune,startup,concurrency`` leaves some out):

data
    ``load_dataset`` of the 10,015 images with an empty cache folder (cold: decode, resize, write
    the cache) and again (warm: one ``np.load``). Cold is the decode cache's; the image files are
    likely in the OS page cache.
plain
    One mid-size candidate (seed 000's proposed CNN cut to 2 blocks, batch 64, class weights so an
    epoch is exactly the training split) trained with ``model.fit`` in this process: images per
    second over ``--epochs`` epochs after one warm-up epoch. An epoch includes the validation pass,
    as every search trial's does. Also the share of each epoch spent producing input batches (gathering
    them by index from the shared images, as :class:`automl.trial.TrainingBatches` does), timed around
    every batch: an upper bound on the time the training step waits for its input, since Keras' tf.data
    pipeline prefetches the batches in a thread beside the step.
tune
    The same candidate as a Ray Tune trial of the project's ``CandidateTrainable`` (through
    ``build_tuner``, as a search runs it: data via the object store, a checkpoint every epoch),
    given both CPUs like the plain run. Images per second from the per-epoch times the trial
    reports: "end to end" from its elapsed time between epochs (training, validation, checkpoint,
    reporting), "in step" from Tune's ``time_this_iter_s`` (training and validation only).
    Overhead % = (plain - Tune) / plain.
startup
    ``--startup-trials`` sequential one-epoch trials of that candidate (1 at a time, actors
    reused). Per trial: the driver's time from the slot being free (``fit()`` called, for the first
    trial; the previous trial's end, for later ones) to the trial's first epoch result, minus that
    epoch's own time inside the trial. That leaves scheduling, starting the actor (TensorFlow
    import, dataset from the object store) or resetting a reused one, building the model, and
    reporting. The data is in the object store before ``fit()``.
concurrency
    Trials per hour of a small random search (``automl/search_spaces/quick.yaml``, no pruning,
    ``--search-trials`` trials of ``--search-epochs`` epochs) with 1 trial at a time given both
    CPUs versus 2 at a time with one CPU each, as ``automl search`` child processes.

Writes ``OUT/throughput.json`` and ``OUT/throughput.png`` (``throughput-HxW.*`` with ``--image-size``); the
concurrency searches land in ``OUT/runs/throughput-concurrencyN/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from automl import console

console.import_tensorflow_quietly()  # before keras and ray.tune import it: no C++ start-up chatter

import keras
from ray import tune

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    REPO,
    RUNS,
    check_idle,
    fmt,
    mark_complete,
    print_table,
    read_search,
    run_search_process,
    save_figure,
    use_local_ray,
    write_result,
)

from automl.data import Dataset, load_dataset
from automl.spec import Spec, TrainingSpec, load_spec, parse_image_size, search_overrides

PARTS = ("data", "plain", "tune", "startup", "concurrency")
CANDIDATE_SPEC = REPO / "automl" / "search_spaces" / "seed000_proposed.yaml"
# Seed 000's 4 blocks at batch 32 take 10-20 s an epoch here; 2 blocks at batch 64 (1.7 M weights)
# is a typical mid-size candidate of the search space.
MID_SIZE = {"conv_blocks": 2, "block_dropout": [0.1, 0.2], "batch_size": 64}
SEARCH_SPEC = REPO / "automl" / "search_spaces" / "quick.yaml"
CPUS = os.cpu_count() or 2
OVERHEAD_GOAL_PCT, STARTUP_GOAL_S, INPUT_WAIT_GOAL_PCT = 5.0, 2.0, 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3,
                        help="measured epochs after one warm-up, plain and Tune (default 3)")
    parser.add_argument("--startup-trials", type=int, default=5,
                        help="sequential trials for start-up times (default 5)")
    parser.add_argument("--search-trials", type=int, default=6, help="trials per concurrency search (default 6)")
    parser.add_argument("--search-epochs", type=int, default=3,
                        help="epochs per trial of the concurrency searches (default 3)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out, of: {', '.join(PARTS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="HAM10000 folder (default ../shared/data/ham10000_28)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/benchmarks)")
    parser.add_argument("--image-size", type=lambda v: parse_image_size(v, "--image-size"), default=None,
                        help="S or HxW: the candidate's image size (default its spec's, 28 px)")
    args = parser.parse_args(argv)
    args.skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    if args.skip - set(PARTS):
        parser.error(f"--skip: unknown {', '.join(sorted(args.skip - set(PARTS)))}; parts are {', '.join(PARTS)}")
    if min(args.epochs, args.startup_trials, args.search_trials, args.search_epochs) < 1:
        parser.error("--epochs, --startup-trials, --search-trials and --search-epochs must be at least 1")
    return args


def candidate_spec(image_size: tuple[int, int] | None = None) -> Spec:
    """The fixed mid-size candidate, with its data section (28 px unless ``image_size``, lesion-grouped split)."""
    spec = load_spec(CANDIDATE_SPEC)
    if image_size is not None:
        spec = spec.with_overrides({"data.image_size": list(image_size)})
    return dataclasses.replace(spec, hyperparameters=dict(spec.hyperparameters) | MID_SIZE)


# --- data ----------------------------------------------------------------------------------------


def time_data_prep(spec: Spec, data_dir: Path) -> dict[str, Any]:
    """Seconds to load the dataset with an empty cache folder, then again from the cache it wrote."""
    with tempfile.TemporaryDirectory(prefix="automl-cache-") as cache:
        seconds = []
        for _ in ("cold", "warm"):
            started = time.monotonic()
            dataset = load_dataset(data_dir, cache_dir=cache, **spec.data.dataset_args())
            seconds.append(time.monotonic() - started)
    return {"images": len(dataset.table), "cold_s": seconds[0], "warm_s": seconds[1]}


# --- plain Keras ---------------------------------------------------------------------------------


class EpochTimer(keras.callbacks.Callback):
    """Seconds per epoch; placed after the validation callback, so the validation pass is included."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.monotonic() - self.started)


class InputClock:
    """Seconds spent producing training batches (``TrainingBatches.__getitem__``, the gather by index) per epoch:
    wraps the method for the duration of a ``with`` block; the epochs are told apart by the batches' own epoch."""

    def __init__(self):
        self.seconds: dict[int, float] = {}

    def __enter__(self):
        from automl.trial import TrainingBatches

        self.original = original = TrainingBatches.__getitem__
        clock = self

        def timed(batches, index):
            started = time.monotonic()
            try:
                return original(batches, index)
            finally:
                clock.seconds[batches.epoch] = clock.seconds.get(batches.epoch, 0.0) + time.monotonic() - started

        TrainingBatches.__getitem__ = timed
        return self

    def __exit__(self, *exc):
        from automl.trial import TrainingBatches

        TrainingBatches.__getitem__ = self.original


def plain_fit(spec: Spec, dataset: Dataset, epochs: int) -> dict[str, Any]:
    """Images per second of ``model.fit`` in this process, over ``epochs`` epochs after a warm-up one, and the share
    of those epochs spent producing input batches."""
    from automl.trial import fit_candidate

    timer = EpochTimer()
    # Patience 0: early stopping off, every epoch runs.
    with InputClock() as inputs:
        fit_candidate(spec.model_config(), dataset, spec.objective,
                      TrainingSpec(epochs=epochs + 1, early_stopping_patience=0, seed=spec.training.seed),
                      callbacks=[timer])
    waited = [inputs.seconds.get(epoch, 0.0) for epoch in range(1, epochs + 1)]
    return rates(timer.seconds[0], timer.seconds[1:], train_size(dataset)) | {
        "input_s": waited, "input_pct": 100 * sum(waited) / sum(timer.seconds[1:])}


def train_size(dataset: Dataset) -> int:
    return int((dataset.table["split"] == "train").sum())


def rates(warmup_s: float, epoch_s: list[float], images: int) -> dict[str, Any]:
    return {"warmup_s": warmup_s, "epoch_s": epoch_s, "images_per_s": images * len(epoch_s) / sum(epoch_s)}


# --- Ray Tune ------------------------------------------------------------------------------------


class TrialClock(tune.Callback):
    """Driver-side Unix times of each trial's start, epoch results and end, in the order trials start."""

    def __init__(self):
        self.fit_called = 0.0
        self.starts: dict[str, float] = {}
        self.results: dict[str, list[dict[str, float]]] = {}
        self.ends: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append(
            {"at": time.time(), "in_step_s": result["time_this_iter_s"], "elapsed_s": result["elapsed_s"]})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ends[trial.trial_id] = time.time()


def run_trials(spec: Spec, dataset: Dataset, trials: int, epochs: int, work_dir: Path) -> TrialClock:
    """``trials`` sequential trials of the fixed candidate, ``epochs`` each, built as ``automl search`` builds them."""
    from automl.search._ray import build_tuner

    spec = spec.with_overrides(search_overrides({
        "searcher": "random", "scheduler": "none", "num_samples": trials, "max_epochs": epochs,
        "max_concurrent": 1, "cpu": CPUS, "grace_period": 1,
    }))
    clock = TrialClock()
    # The data goes to the object store here.
    tuner = build_tuner(dataset, spec, work_dir / "throughput", [clock])
    clock.fit_called = time.time()
    tuner.fit()
    return clock


def tune_rates(clock: TrialClock, images: int) -> dict[str, Any]:
    """Images per second of the one trial's epochs after the first: end to end, and in step only."""
    results = next(iter(clock.results.values()))
    elapsed = [r["elapsed_s"] for r in results]
    end_to_end = [b - a for a, b in itertools.pairwise(elapsed)]
    in_step = [r["in_step_s"] for r in results[1:]]
    return {"end_to_end": rates(elapsed[0], end_to_end, images),
            "in_step": rates(results[0]["in_step_s"], in_step, images)}


def startup_times(clock: TrialClock) -> list[dict[str, Any]]:
    """Per trial, in start order: launch (slot free to trial start) + result gap = start-up, and the epoch it subtracts.

    ``previous_tail_s`` is the time from the previous trial's last result to its end (its last
    checkpoint and stop): not part of the start-up, but also time between two trials' training.
    """
    out, slot_free, tail = [], clock.fit_called, None
    for trial_id, started in clock.starts.items():
        first, last = clock.results[trial_id][0], clock.results[trial_id][-1]
        launch, gap = started - slot_free, first["at"] - started - first["in_step_s"]
        out.append({"trial": trial_id, "launch_s": launch, "result_gap_s": gap, "startup_s": launch + gap,
                    "first_epoch_s": first["in_step_s"], "previous_tail_s": tail})
        slot_free = clock.ends.get(trial_id, last["at"])
        tail = slot_free - last["at"]
    return out


def tune_parts(spec: Spec, dataset: Dataset, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """The Tune trial's images per second and the trials' start-up times, on one embedded Ray instance."""
    import ray

    from automl.search import start_ray

    out: dict[str, Any] = {}
    use_local_ray()
    start_ray(None)
    try:
        if "tune" not in args.skip:
            console.info(f"tune: one trial of {args.epochs + 1} epochs")
            clock = run_trials(spec, dataset, 1, args.epochs + 1, work_dir / "tune")
            out["tune"] = tune_rates(clock, train_size(dataset))
        if "startup" not in args.skip:
            console.info(f"startup: {args.startup_trials} sequential one-epoch trials")
            out["startup"] = startup_times(run_trials(spec, dataset, args.startup_trials, 1, work_dir / "startup"))
    finally:
        ray.shutdown()
    return out


# --- concurrency ---------------------------------------------------------------------------------


def trials_per_hour(args: argparse.Namespace, concurrent: int) -> dict[str, Any] | None:
    """A small random search with ``concurrent`` trials at a time sharing the CPUs; trials finished per hour.

    None when the search failed.
    """
    cpu = CPUS // concurrent
    spec = load_spec(SEARCH_SPEC).with_overrides(search_overrides({
        "searcher": "random", "scheduler": "none", "num_samples": args.search_trials, "max_epochs": args.search_epochs,
        "grace_period": 1, "max_concurrent": concurrent, "cpu": cpu, "seed": 0,
    }))
    run_dir = args.out / RUNS / f"throughput-concurrency{concurrent}"
    console.info(f"concurrency {concurrent}: {args.search_trials} trials of {args.search_epochs} epochs "
                 f"(log: {run_dir / 'search.log'})")
    outcome = run_search_process(spec, args.data.resolve(), run_dir)
    if not mark_complete(outcome, concurrent=concurrent):
        console.info(f"concurrency {concurrent}: the search failed (exit code {outcome.returncode}); "
                     f"see {run_dir / 'search.log'}")
        return None
    search = read_search(run_dir)
    done = int(search.trials["status"].isin(["completed", "pruned", "errored"]).sum())
    span = float(search.epochs["t"].max())  # search start to the last epoch: Ray's shutdown is not a trial's cost
    return {"concurrent": concurrent, "cpu_per_trial": cpu, "trials": done, "epochs": len(search.epochs),
            "span_s": span, "trials_per_hour": done / span * 3600, "run_dir": str(run_dir)}


# --- report --------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the goal lines; returns the goal checks."""
    rows, checks = [], {}
    if data := results.get("data"):
        rows.append(["data prep, cold (decode + resize + cache write)", f"{data['cold_s']:.1f} s",
                     f"{data['images']} images, {data['images'] / data['cold_s']:.0f} images/s"])
        rows.append(["data prep, warm (cache hit)", f"{data['warm_s']:.2f} s", ""])
    plain = results.get("plain")
    if plain:
        rows.append(["plain model.fit", f"{plain['images_per_s']:.0f} images/s",
                     f"epochs {', '.join(f'{s:.1f}' for s in plain['epoch_s'])} s; warm-up {plain['warmup_s']:.1f} s"])
        if "input_pct" in plain:
            rows.append(["share of an epoch producing input batches (bounds the wait)", f"{plain['input_pct']:.1f} %",
                         f"{', '.join(f'{s:.2f}' for s in plain['input_s'])} s per epoch (gather by index)"])
            checks["input_wait_pct"] = plain["input_pct"]
            checks["input_wait_goal_met"] = plain["input_pct"] < INPUT_WAIT_GOAL_PCT
    if tuned := results.get("tune"):
        for kind, what in (("end_to_end", "training, validation, checkpoint, reporting"),
                           ("in_step", "training and validation")):
            rate = tuned[kind]
            overhead = (plain["images_per_s"] - rate["images_per_s"]) / plain["images_per_s"] * 100 if plain else None
            rate["overhead_pct"] = overhead
            epochs = ", ".join(f"{s:.1f}" for s in rate["epoch_s"])
            rows.append([f"Ray Tune trial, {kind.replace('_', ' ')}", f"{rate['images_per_s']:.0f} images/s",
                         f"overhead {fmt(overhead, 1)} %; epochs {epochs} s ({what})"])
        if plain:
            overhead = tuned["end_to_end"]["overhead_pct"]
            checks["overhead_pct"], checks["overhead_goal_met"] = overhead, overhead < OVERHEAD_GOAL_PCT
    if startup := results.get("startup"):
        first, later = startup[0], [t["startup_s"] for t in startup[1:]]
        rows.append(["trial start-up, first trial", f"{first['startup_s']:.1f} s",
                     (f"launch {first['launch_s']:.1f} s + result gap {first['result_gap_s']:.2f} s (new actor); "
                      f"first epoch {first['first_epoch_s']:.1f} s")])
        if later:
            median = statistics.median(later)
            tails = statistics.median(t["previous_tail_s"] for t in startup[1:])
            rows.append(["trial start-up, later trials (median)", f"{median:.2f} s",
                         (f"per trial {', '.join(f'{s:.2f}' for s in later)} s (reused actor); previous trial's "
                          f"checkpoint and stop {tails:.2f} s more")])
            checks["startup_later_median_s"], checks["startup_goal_met"] = median, median < STARTUP_GOAL_S
    if runs := results.get("concurrency"):
        for run in runs:
            rows.append([f"trials/hour, {run['concurrent']} at a time ({run['cpu_per_trial']} CPU each)",
                         f"{run['trials_per_hour']:.0f}",
                         f"{run['trials']} trials, {run['epochs']} epochs in {run['span_s']:.0f} s"])
        if len(runs) == 2:
            checks["concurrency_speedup"] = runs[1]["trials_per_hour"] / runs[0]["trials_per_hour"]
            rows.append(["speed-up of 2 at a time", f"{checks['concurrency_speedup']:.2f}x", ""])
    size = "x".join(map(str, results.get("image_size") or ()))
    print_table(f"Throughput on {CPUS} CPUs" + (f", {size} px" if size else ""), ["measure", "value", "detail"], rows,
                caption="start-up = driver time from the slot being free (fit() called for the first trial; the "
                        "previous trial's end for later ones) to the trial's first epoch result, minus that epoch's "
                        "own time in the trial; launch = slot free to trial start, result gap = the rest.")
    if "overhead_goal_met" in checks:
        print(f"Ray trial overhead on throughput (end to end): {checks['overhead_pct']:.1f} % "
              f"(goal < {OVERHEAD_GOAL_PCT:.0f} %): {'goal met' if checks['overhead_goal_met'] else 'goal not met'}")
    if "input_wait_goal_met" in checks:
        met = "goal met" if checks["input_wait_goal_met"] else "goal not met"
        print(f"share of an epoch producing input batches: {checks['input_wait_pct']:.1f} % "
              f"(goal < {INPUT_WAIT_GOAL_PCT:.0f} %): {met}")
    if "startup_goal_met" in checks:
        print(f"trial start-up after the first trial: median {checks['startup_later_median_s']:.2f} s "
              f"(goal < {STARTUP_GOAL_S:.0f} s): {'goal met' if checks['startup_goal_met'] else 'goal not met'}")
    return checks


def plot(results: dict[str, Any], path: Path) -> None:
    """Bars: images/s plain versus Tune; start-up per trial; trials/hour 1 versus 2 at a time."""
    import matplotlib.pyplot as plt

    panels = [p for p in ("rate", "startup", "concurrency") if p != "rate" and results.get(p)
              or p == "rate" and (results.get("plain") or results.get("tune"))]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "rate":
            bars = {"plain\nmodel.fit": results.get("plain", {}).get("images_per_s")}
            if tuned := results.get("tune"):
                bars |= {"Tune trial\nend to end": tuned["end_to_end"]["images_per_s"],
                         "Tune trial\nin step": tuned["in_step"]["images_per_s"]}
            bars = {k: v for k, v in bars.items() if v}
            ax.bar(list(bars), list(bars.values()), color=["tab:gray", "tab:blue", "tab:cyan"][: len(bars)])
            for i, v in enumerate(bars.values()):
                ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
            ax.set(title="training throughput (images/s)", ylabel="images per second")
        elif panel == "startup":
            startup = results["startup"]
            names = ["1 (new)"] + [f"{i} (reused)" for i in range(2, len(startup) + 1)]
            launch, gap = [t["launch_s"] for t in startup], [t["result_gap_s"] for t in startup]
            ax.bar(names, launch, color="tab:blue", label="launch")
            ax.bar(names, gap, bottom=launch, color="tab:orange", label="result gap")
            ax.axhline(STARTUP_GOAL_S, color="black", ls=":", lw=1, label=f"goal {STARTUP_GOAL_S:.0f} s")
            ax.set(title="trial start-up (s)", xlabel="trial", ylabel="seconds")
            ax.tick_params(axis="x", labelsize=7)
            ax.legend(fontsize=8)
        else:
            runs = results["concurrency"]
            names = [f"{r['concurrent']} at a time\n({r['cpu_per_trial']} CPU each)" for r in runs]
            ax.bar(names, [r["trials_per_hour"] for r in runs], color=["tab:gray", "tab:blue"][: len(runs)])
            for i, r in enumerate(runs):
                ax.text(i, r["trials_per_hour"], f"{r['trials_per_hour']:.0f}", ha="center", va="bottom", fontsize=8)
            ax.set(title="small random search: trials per hour", ylabel="trials per hour")
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = candidate_spec(args.image_size)
    results: dict[str, Any] = {"load_average_at_start": check_idle(), "candidate": dict(spec.hyperparameters),
                               "cpus": CPUS, "image_size": list(spec.data.image_size)}
    name = "throughput" + (f"-{'x'.join(map(str, args.image_size))}" if args.image_size else "")
    if "data" not in args.skip:
        console.info("data: loading the dataset cold, then warm")
        results["data"] = time_data_prep(spec, args.data)
    dataset = load_dataset(args.data, **spec.data.dataset_args())
    results["train_images"] = train_size(dataset)
    if "plain" not in args.skip:
        console.info(f"plain: model.fit of {args.epochs + 1} epochs")
        results["plain"] = plain_fit(spec, dataset, args.epochs)
    if not {"tune", "startup"} <= args.skip:
        work_dir = Path(tempfile.mkdtemp(prefix="throughput-"))
        try:
            results |= tune_parts(spec, dataset, args, work_dir)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    if "concurrency" not in args.skip:
        results["concurrency"] = [run for n in (1, 2) if (run := trials_per_hour(args, n))]
    checks = report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / f"{name}.json", {
        "settings": {"epochs": args.epochs, "startup_trials": args.startup_trials, "search_trials": args.search_trials,
                     "search_epochs": args.search_epochs, "skipped": sorted(args.skip), "data": str(args.data),
                     "candidate_spec": f"{CANDIDATE_SPEC.relative_to(REPO)} with {MID_SIZE}",
                     "search_spec": str(SEARCH_SPEC.relative_to(REPO))},
        **results, "goals": checks,
    })
    plot(results, args.out / f"{name}.png")
    print(f"wrote {args.out / f'{name}.json'} and {args.out / f'{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
