"""GPU check: what TensorFlow sees here, what mixed precision gains, and the input pipeline's share of an epoch.

    python benchmarks/gpu_check.py                         # about a minute on a GPU, a few on 2 CPU cores
    python benchmarks/gpu_check.py --image-size 128 --steps 30

Run it on a GPU node (or in the cluster's image) before a long search. Three parts:

devices
    TensorFlow's build (CUDA and cuDNN versions, or a CPU-only build), the GPUs it sees with their compute
    capability and memory (NVML), and what ``training.precision: auto`` resolves to there (:mod:`automl.devices`).
    Without a GPU it says so plainly, and the rest runs on the CPU.
precision
    A fixed CNN (3 blocks of 2 conv3x3, 32-64-128 filters, batch norm, batch ``--batch-size``) built by
    :func:`automl.model.build_model` under each policy, trained on random uint8 images: the median seconds per
    training step after ``--warmup`` steps, float32 against mixed_float16 on a GPU (mixed_bfloat16 on a CPU,
    where float16 has no fast kernels), and the speed-up.
input
    One epoch of ``--images`` images through :class:`automl.trial.TrainingBatches` (the batches every engine trains
    with), fastest policy, with the time spent producing the batches (gathering them by index) timed around each:
    their share of the epoch, an upper bound on what the step waits for its input (Keras prefetches in a thread).

Writes ``OUT/gpu_check.json`` (``gpu_check-HxW.json`` with another ``--image-size``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_OUT, check_idle, print_table, write_result  # noqa: E402

from automl import console  # noqa: E402

SIZE = 64
CONFIG = {"conv_blocks": 3, "convs_per_block": 2, "base_filters": 32, "batch_norm": True, "dense_layers": 1,
          "dense_units": 128, "head": "gap", "imbalance": "none"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=SIZE, help=f"square input size (default {SIZE})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per policy")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, autotuning)")
    parser.add_argument("--images", type=int, default=2048, help="images in the input-pipeline epoch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/benchmarks)")
    return parser.parse_args(argv)


def device_report() -> dict:
    """TensorFlow's build and the GPUs it sees, with capability, memory and the precision ``auto`` picks."""
    import tensorflow as tf

    from automl.devices import gpu_capabilities, gpu_total_mib, resolve_precision

    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    return {
        "tensorflow": tf.__version__,
        "cuda_build": bool(build.get("is_cuda_build")),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [{"name": d.get("device_name"), "compute_capability": list(d.get("compute_capability") or []),
                  "memory_mib": gpu_total_mib(i)} for i, d in enumerate(details)],
        "cpus": os.cpu_count(),
        "auto_precision": resolve_precision("auto", gpu_capabilities()),
    }


def step_seconds(policy: str, args: argparse.Namespace) -> float:
    """Median seconds per training step of the fixed CNN under ``policy``."""
    import keras
    import numpy as np

    from automl.devices import precision_policy
    from automl.hparams import ModelConfig
    from automl.model import build_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    with precision_policy(policy):
        model = build_model(ModelConfig.from_params(CONFIG | {"batch_size": args.batch_size}),
                            (args.image_size, args.image_size), 7)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = rng.integers(0, 7, args.batch_size)
    times = []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)  # returns numbers: the step has finished on the device when it returns
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def input_share(policy: str, args: argparse.Namespace) -> dict:
    """One epoch of TrainingBatches under ``policy``: its seconds and the share spent producing the batches."""
    import keras
    import numpy as np

    from automl.devices import precision_policy
    from automl.hparams import ModelConfig
    from automl.model import build_model
    from automl.trial import TrainingBatches

    config = ModelConfig.from_params(CONFIG | {"batch_size": args.batch_size})
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, args.images)

    class Timed(TrainingBatches):
        spent = 0.0

        def __getitem__(self, index):
            started = time.perf_counter()
            try:
                return super().__getitem__(index)
            finally:
                Timed.spent += time.perf_counter() - started

    keras.backend.clear_session()
    with precision_policy(policy):
        model = build_model(config, (args.image_size, args.image_size), 7)
    model.fit(Timed(images, labels, config, 7, seed=0), epochs=1, verbose=0, shuffle=False)  # warm-up: tracing
    Timed.spent = 0.0
    batches = Timed(images, labels, config, 7, seed=0, first_epoch=1)
    started = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0, shuffle=False)
    epoch = time.perf_counter() - started
    return {"policy": policy, "images": args.images, "epoch_s": epoch, "batches_s": Timed.spent,
            "input_share": Timed.spent / epoch}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = check_idle()
    devices = device_report()
    gpu = bool(devices["gpus"])
    if gpu:
        print_table("GPUs TensorFlow sees", ["#", "name", "compute capability", "memory MiB"],
                    [[i, g["name"], ".".join(map(str, g["compute_capability"])), g["memory_mib"] or "-"]
                     for i, g in enumerate(devices["gpus"])])
    else:
        console.info("no GPU found: TensorFlow sees none"
                     + ("" if devices["cuda_build"] else " (this TensorFlow is a CPU-only build)")
                     + f"; CUDA_VISIBLE_DEVICES={devices['cuda_visible_devices'] or 'unset'}. On a GPU machine "
                       "install the CUDA build (pip install '.[gpu]') and check nvidia-smi. The figures below are "
                       "this CPU's.")
    console.info(f"TensorFlow {devices['tensorflow']} (CUDA {devices['cuda_version'] or '-'}, cuDNN "
                 f"{devices['cudnn_version'] or '-'}); training.precision auto -> {devices['auto_precision']}")
    mixed = "mixed_float16" if gpu else "mixed_bfloat16"
    steps = {policy: step_seconds(policy, args) for policy in ("float32", mixed)}
    speedup = steps["float32"] / steps[mixed]
    images_per_s = {policy: args.batch_size / s for policy, s in steps.items()}
    print_table(f"Training step, fixed CNN at {args.image_size}px, batch {args.batch_size} "
                f"({'GPU' if gpu else 'CPU'})", ["policy", "s per step", "images/s"],
                [[p, f"{s:.4f}", f"{images_per_s[p]:.0f}"] for p, s in steps.items()],
                caption=f"{mixed} speed-up over float32: {speedup:.2f}x")
    fastest = min(steps, key=steps.get)
    pipeline = input_share(fastest, args)
    console.info(f"input pipeline: {pipeline['batches_s']:.2f} s of a {pipeline['epoch_s']:.2f} s epoch "
                 f"({100 * pipeline['input_share']:.1f} %) producing batches, {args.images} images, {fastest}")
    name = "gpu_check" if args.image_size == SIZE else f"gpu_check-{args.image_size}x{args.image_size}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / f"{name}.json", {
        "load_average_at_start": load, "devices": devices, "gpu_found": gpu,
        "model": CONFIG, "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "step_s": steps, "images_per_s": images_per_s, "mixed_policy": mixed, "mixed_speedup": speedup,
        "input": pipeline,
    })
    console.info(f"wrote {args.out / f'{name}.json'}")


if __name__ == "__main__":
    main()
