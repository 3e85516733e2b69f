"""automl.devices: GPUs checked against Ray's assignment, memory caps, precision, replicas, concurrency.

No GPU here: the GPU paths run with the devices hidden (a trial given a GPU that TensorFlow cannot see), the
replica path on a CPU split into two logical devices (in a subprocess: a process's devices are fixed once
TensorFlow initialises them), and the precision policies on the CPU (mixed_bfloat16 runs there).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from automl import devices
from automl.errors import UserError
from automl.spec import SETTINGS, parse_spec

REPO = Path(__file__).resolve().parents[1]


def test_a_trial_given_gpus_that_tensorflow_cannot_see_fails_in_one_line():
    with pytest.raises(UserError) as raised:
        devices.require_visible_gpus(1, ["3"], [])
    message = str(raised.value)
    assert "\n" not in message and "GPU ids 3" in message and "TensorFlow sees 0" in message
    assert "skin-automl[gpu]" in message and "--gpus-per-trial 0" in message
    with pytest.raises(UserError, match="TensorFlow sees 1"):  # two GPUs held, one seen: would use one
        devices.require_visible_gpus(2, ["0", "1"], ["/physical_device:GPU:0"])
    devices.require_visible_gpus(0.5, ["0"], ["/physical_device:GPU:0"])  # a fraction of the one it sees
    devices.require_visible_gpus(0, [], [])  # a CPU trial


def _run(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # oneDNN off: its CPU graph rewrite mis-wires the second replica's convolutions on logical CPU devices (TF 2.21:
    # "input depth must be evenly divisible by filter depth: 3 vs 4" in replica_1); GPUs never run it.
    env = os.environ | {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                        "TF_ENABLE_ONEDNN_OPTS": "0"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO, check=False)


def test_configuring_a_gpu_trial_with_the_gpus_hidden_raises_before_any_training():
    proc = _run("""
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        from automl.devices import configure_tensorflow
        from automl.errors import UserError
        try:
            configure_tensorflow(1, gpus=1, gpu_ids=[0])
        except UserError as exc:
            print("REFUSED", exc)
        else:
            print("TRAINED ON")
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED this trial holds 1 GPU(s) from Ray (GPU ids 0" in proc.stdout


def test_fractional_gpus_get_a_memory_cap_in_proportion():
    assert devices.memory_limit_mib(0.5, 16_000) == 8_000 - devices.CUDA_CONTEXT_MIB
    assert devices.memory_limit_mib(0.25, 40_960) == 10_240 - devices.CUDA_CONTEXT_MIB
    two = 2 * (devices.memory_limit_mib(0.5, 16_000) + devices.CUDA_CONTEXT_MIB)
    assert two <= 16_000  # two half-GPU trials fit together, their CUDA contexts included
    assert devices.memory_limit_mib(1, 16_000) is None and devices.memory_limit_mib(0.5, None) is None
    assert devices.gpu_total_mib(0) is None  # no NVML device here: no cap rather than a failure


def test_auto_precision_follows_the_device():
    assert devices.resolve_precision("auto", [(7, 0)]) == "mixed_float16"
    assert devices.resolve_precision("auto", [(7, 5), (6, 0)]) == "float32"  # one old GPU: no tensor cores there
    assert devices.resolve_precision("auto") == "float32"  # this machine: no GPU
    assert devices.resolve_precision("float32", [(9, 0)]) == "float32"


def test_precision_is_a_setting_with_a_flag_and_its_domain():
    setting = SETTINGS["training.precision"]
    assert setting.default == "auto" and setting.flag == "--precision" and setting.choices == devices.PRECISIONS
    assert parse_spec({"training": {"precision": "mixed_bfloat16"}}).training.precision == "mixed_bfloat16"
    with pytest.raises(UserError, match="training.precision"):
        parse_spec({"training": {"precision": "float16"}})


def _tiny(tiny_ham):
    from automl.data import load_dataset
    from automl.hparams import ModelConfig

    dataset = load_dataset(tiny_ham, image_size=(16, 16))
    config = ModelConfig.from_params({"conv_blocks": 1, "base_filters": 4, "dense_units": 8, "batch_size": 16,
                                      "batch_norm": True, "learning_rate": 3e-3, "imbalance": "class_weight"})
    return dataset, config


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_a_mixed_precision_candidate_computes_in_bfloat16_with_float32_variables_and_output(tiny_ham, task):
    from automl.data import load_dataset
    from automl.spec import TrainingSpec
    from automl.trial import build_candidate, predict_proba

    import keras

    _, config = _tiny(tiny_ham)
    dataset = load_dataset(tiny_ham, image_size=(16, 16), task=task)
    model = build_candidate(config, dataset, TrainingSpec(precision="mixed_bfloat16"))
    conv = model.get_layer("block1_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert {v.dtype for v in model.weights} == {"float32"}
    assert model.output.dtype == "float32" and model.get_layer("probabilities").compute_dtype == "float32"
    probs = predict_proba(model, dataset.images, dataset.rows("val"))
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert keras.config.dtype_policy().name == "float32"  # the policy was the build's only: nothing else inherits it


def test_a_mixed_float16_checkpoint_resumes_with_its_loss_scaling_and_optimizer_state(tiny_ham, tmp_path):
    from automl.objective import Objective
    from automl.spec import TrainingSpec
    from automl.trial import EpochRunner

    import keras

    dataset, config = _tiny(tiny_ham)
    training = TrainingSpec(precision="mixed_float16")
    runner = EpochRunner(config, dataset, Objective(), training, seed=0)
    assert isinstance(runner.model.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras wraps it at compile
    runner.run_epoch()
    runner.save(tmp_path)
    restored = EpochRunner(config, dataset, Objective(), training, seed=0)
    restored.restore(tmp_path)
    assert isinstance(restored.model.optimizer, keras.optimizers.LossScaleOptimizer)
    saved = [np.asarray(v) for v in runner.model.optimizer.variables]
    loaded = [np.asarray(v) for v in restored.model.optimizer.variables]
    assert len(saved) == len(loaded) and any(np.abs(v).sum() > 0 for v in loaded[4:])
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded))  # Adam's moments came back, not fresh zeros
    assert np.isfinite(restored.run_epoch()["loss"])


def test_two_logical_devices_train_one_candidate_as_two_mirrored_replicas(tiny_ham):
    """The multi-GPU path on a CPU split in two: built and trained under MirroredStrategy, variables on both."""
    proc = _run(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from automl import devices
        devices.configure_tensorflow(2)
        devices.use_replicas([d.name for d in tf.config.list_logical_devices("CPU")])
        from automl.data import load_dataset
        from automl.hparams import ModelConfig
        from automl.objective import Objective
        from automl.spec import TrainingSpec
        from automl.trial import EpochRunner
        import tempfile, pathlib, numpy as np
        dataset = load_dataset({str(tiny_ham)!r}, image_size=(16, 16))
        config = ModelConfig.from_params({{"conv_blocks": 1, "base_filters": 4, "dense_units": 8, "batch_size": 16,
                                          "imbalance": "class_weight"}})
        runner = EpochRunner(config, dataset, Objective(), TrainingSpec(), seed=0)
        logs = runner.run_epoch()
        kernel = runner.model.get_layer("block1_conv1").kernel.value
        print("REPLICAS", runner.model.distribute_strategy.num_replicas_in_sync)
        print("MIRRORED", isinstance(kernel, tf.distribute.DistributedValues),
              sorted({{v.device.split("/")[-1] for v in getattr(kernel, "values", [kernel])}}))
        print("FINITE", bool(np.isfinite(logs["loss"])), 0 <= logs["val_balanced_accuracy"] <= 1)
        with tempfile.TemporaryDirectory() as folder:
            runner.save(pathlib.Path(folder))
            runner.restore(pathlib.Path(folder))
        print("RESTORED", runner.model.distribute_strategy.num_replicas_in_sync,
              np.isfinite(runner.run_epoch()["loss"]))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "REPLICAS 2" in out
    assert "MIRRORED True ['device:CPU:0', 'device:CPU:1']" in out
    assert "FINITE True True" in out and "RESTORED 2 True" in out


def test_one_device_trains_without_a_strategy():
    assert devices.replica_strategy(["/device:GPU:0"]) is None and devices.replica_strategy([]) is None


def test_prediction_runs_in_bounded_batches(tiny_ham):
    """Validation, scoring and TTA call the model on one bounded batch at a time, never on a whole split."""
    from automl.data import load_dataset
    from automl.posthoc import predict_modes
    from automl.trial import PREDICT_BATCH_MAX, gathered, predict_batch_size, predict_proba

    assert predict_batch_size((28, 28)) == PREDICT_BATCH_MAX and predict_batch_size((600, 450)) == 3
    assert predict_batch_size((128, 128)) == 64
    dataset = load_dataset(tiny_ham, image_size=(16, 16))
    seen = []

    class Recorder:
        output_shape = (None, 7)

        def __call__(self, batch, training=False):
            seen.append(len(batch))
            import tensorflow as tf

            return tf.fill((len(batch), 7), 1 / 7)

    rows = np.arange(len(dataset.images))
    probs = predict_proba(Recorder(), dataset.images, rows)
    assert probs.shape == (len(rows), 7) and sum(seen) == len(rows)
    assert max(seen) == min(len(rows), predict_batch_size(dataset.image_size))
    seen.clear()
    batches = list(gathered(dataset.images, rows, batch=7))
    for batch in batches:  # as a retrained member is scored: each batch's views, one at a time
        predict_modes(lambda x: predict_proba(Recorder(), x), batch, ["none", "dihedral"])
    assert max(seen) <= 7 and len(seen) == 8 * len(batches)


def test_concurrency_follows_the_clusters_gpus_or_cpus_and_the_trials_request():
    assert devices.concurrent_trials({"CPU": 2.0}, 1, 0) == 2  # this machine: the old default
    assert devices.concurrent_trials({"CPU": 16.0, "GPU": 4.0}, 2, 1) == 4  # by the GPUs
    assert devices.concurrent_trials({"CPU": 16.0, "GPU": 4.0}, 2, 0.5) == 8  # two trials per GPU
    assert devices.concurrent_trials({"CPU": 16.0, "GPU": 4.0}, 4, 0.5) == 4  # the CPUs run out first
    assert devices.concurrent_trials({"CPU": 16.0, "GPU": 8.0}, 1, 2) == 4  # two GPUs per trial
    assert devices.concurrent_trials({"CPU": 1.0, "GPU": 1.0}, 1, 0.1) == 1
    assert devices.concurrent_trials({"CPU": 10.0, "GPU": 1.0}, 1, 0.1) == 10  # 0.1 x 10 is one whole GPU
    assert devices.concurrent_trials({"CPU": 4.0}, 1, 1) == 1  # GPU workers not started yet: one at a time
    assert SETTINGS["search.max_concurrent"].default is None and SETTINGS["search.max_concurrent"].optional
    assert parse_spec({"search": {"max_concurrent": 3}}).search.max_concurrent == 3


def test_a_search_without_max_concurrent_takes_the_count_from_the_cluster(monkeypatch):
    import ray

    from automl.search._ray import with_concurrency

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 8.0})
    spec = parse_spec({"search": {"resources": {"cpu": 4, "gpu": 0.5}}})
    assert with_concurrency(spec).search.max_concurrent == 16
    assert with_concurrency(parse_spec({"search": {"max_concurrent": 3}})).search.max_concurrent == 3
    from automl.search import require_feasible

    require_feasible(parse_spec({"hyperparameters": {"conv_blocks": {"choice": [1, 2]}}}))  # probed without Ray
