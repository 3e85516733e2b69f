"""Which devices a process trains on, and how: GPUs checked against what Ray assigned, memory, precision, replicas.

One owner for every device decision; the trial, retrain and search code call it:

- :func:`configure_tensorflow`: once per training process (a Ray trial's worker), before any TensorFlow op. TF's
  thread pools follow the trial's CPU share; a trial given no GPU sees none (Ray 2.60 no longer empties
  ``CUDA_VISIBLE_DEVICES`` for zero-GPU workers, so TF would take every GPU of the node); a trial given GPUs that
  TensorFlow cannot see fails at once, in one line (:func:`require_visible_gpus`), instead of training on the CPU;
  a fractional GPU gets a TensorFlow memory cap in proportion (:func:`memory_limit_mib`), a whole one memory growth.
- :func:`keep_off_gpus`: a driver that only schedules trials keeps TensorFlow off the GPUs its trials need.
- :func:`training_scope`: where a candidate is built or loaded to train: under ``tf.distribute.MirroredStrategy``
  when the process has more than one GPU, and under the spec's precision policy (:func:`resolve_precision`).

More than one GPU per trial: ``MirroredStrategy`` inside the Tune trial, not Ray Train's ``TensorflowTrainer``.
A trial is one process on one node (Ray gives it all its GPUs there); mirroring its variables over them keeps the
trainable, its per-epoch checkpoints, ASHA and the store exactly as they are. Ray Train would start a worker group
per trial, with ``MultiWorkerMirroredStrategy`` over processes, its own checkpoint and report path (``ray.train``
reporting is an error inside Tune in Ray 2.60), for a model small enough to fit one GPU many times over.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence

from automl.errors import UserError

#: The precision setting's values (``training.precision``): Keras dtype policies, or ``auto``.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
#: ``auto`` trains in mixed_float16 on CUDA GPUs of at least this compute capability (Volta and later, with tensor
#: cores: Keras' own mixed-precision guide says older GPUs gain little or run slower), float32 elsewhere: a CPU has
#: no fast float16, and mixed_bfloat16 (1.42x per step on this project's 2-core machine, benchmarks/gpu_check.py)
#: is left to choose, so that CPU searches keep the numerics of every earlier result.
MIXED_FLOAT16_CAPABILITY = (7, 0)
#: What a process's CUDA context and cuDNN/cuBLAS workspaces take outside TensorFlow's allocator, left out of a
#: fractional GPU's memory cap so that trials sharing a GPU fit together (about 300-500 MiB per process).
CUDA_CONTEXT_MIB = 512

_CONFIGURED = False
_STRATEGY = None  # the process's distribution strategy, chosen at its first training_scope (None: not yet)


def configure_tensorflow(cpus: float, gpus: float | None = None, gpu_ids: Sequence | None = None) -> None:
    """Once per training process, before any TensorFlow op: thread pools sized to ``cpus``; the GPUs.

    ``gpus`` is what Ray gave the trial (``--gpus-per-trial``) and ``gpu_ids`` its ``ray.get_gpu_ids()``. None
    (a process that is not a Ray trial: benchmarks) leaves the GPUs as TensorFlow finds them, growing memory on
    demand. 0 hides them. More: TensorFlow must see as many as Ray gave (:func:`require_visible_gpus`); a fraction
    of one caps TensorFlow's memory in proportion, whole GPUs grow memory on demand.
    """
    global _CONFIGURED
    if _CONFIGURED:
        return
    import tensorflow as tf

    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # the runtime was already initialised in this process; keep its pools
    if gpus is not None and gpus <= 0:
        keep_off_gpus()
        _CONFIGURED = True
        return
    visible = tf.config.list_physical_devices("GPU")
    if gpus is not None:
        require_visible_gpus(gpus, gpu_ids, [d.name for d in visible])
    if gpus is not None and gpus < 1 and visible:
        limit = memory_limit_mib(gpus, gpu_total_mib((gpu_ids or [0])[0]))
        if limit is not None:
            try:
                tf.config.set_logical_device_configuration(visible[0],
                                                           [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            except RuntimeError:
                pass  # initialised already (a reused worker): the cap set at its start stays
    else:
        for gpu in visible:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
    _CONFIGURED = True


def require_visible_gpus(gpus: float, gpu_ids: Sequence | None, visible: Sequence[str]) -> None:
    """A :class:`UserError` (one line) when Ray gave the trial ``gpus`` GPUs (ids ``gpu_ids``) and TensorFlow sees
    fewer (``visible``): the trial would otherwise train on the CPU, or on fewer GPUs than it holds."""
    wanted = math.ceil(gpus)
    if gpus <= 0 or len(visible) >= wanted:
        return
    ids = ",".join(map(str, gpu_ids or [])) or "none"
    raise UserError(
        f"this trial holds {gpus:g} GPU(s) from Ray (GPU ids {ids}; CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}) but TensorFlow sees {len(visible)}: install TensorFlow's "
        "CUDA build on every node (pip install 'skin-automl[gpu]', i.e. tensorflow[and-cuda]) and check nvidia-smi, "
        "or pass --gpus-per-trial 0 to train on CPUs")


def memory_limit_mib(fraction: float, total_mib: int | None) -> int | None:
    """TensorFlow's memory cap for a trial holding ``fraction`` of a GPU of ``total_mib``: that share of the GPU,
    less :data:`CUDA_CONTEXT_MIB` for what the process takes outside TF's allocator (None: total unknown, no cap).

    >>> memory_limit_mib(0.5, 16384)  # two trials on a 16 GiB GPU: 7.5 GiB each in TF, 0.5 GiB each outside
    7680
    >>> memory_limit_mib(0.25, 1024)  # never below 256 MiB
    256
    """
    if total_mib is None or not 0 < fraction < 1:
        return None
    return max(256, int(fraction * total_mib) - CUDA_CONTEXT_MIB)


def gpu_total_mib(gpu_id) -> int | None:
    """The memory of GPU ``gpu_id`` (a Ray GPU id: an index or a UUID), from NVML, which Ray vendors.

    Not from TensorFlow: it tells a GPU's memory only once the device is initialised (``get_memory_info``), and then
    its logical configuration (the cap) can no longer be set; NVML reads it without a CUDA context."""
    try:
        import ray._private.thirdparty.pynvml as nvml

        nvml.nvmlInit()
        try:
            text = str(gpu_id)
            handle = (nvml.nvmlDeviceGetHandleByIndex(int(text)) if text.isdigit()
                      else nvml.nvmlDeviceGetHandleByUUID(text))
            return int(nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20)
        finally:
            nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library, no such device: train without a cap rather than fail
        return None


def keep_off_gpus() -> None:
    """This process's TensorFlow sees no GPU: the driver of a Ray search (or retrain) decodes images and schedules
    trials; on a GPU head, TensorFlow would otherwise map every GPU's memory that the trials need. Only this process:
    ``CUDA_VISIBLE_DEVICES`` would also reach the raylet an embedded ``ray.init`` starts, which would then find no
    GPU to offer. Call it before any TensorFlow op (afterwards TensorFlow keeps the devices it initialised)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow initialised its devices already in this process


def gpu_capabilities() -> list[tuple[int, int]]:
    """The CUDA compute capability of each GPU this process's TensorFlow sees (empty on a CPU)."""
    import tensorflow as tf

    return [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0))
            for gpu in tf.config.list_physical_devices("GPU")]


def resolve_precision(setting: str, capabilities: Sequence[tuple[int, int]] | None = None) -> str:
    """The Keras dtype policy a ``training.precision`` setting means on this process's devices (``capabilities``:
    :func:`gpu_capabilities` when None): ``auto`` is mixed_float16 when every GPU has tensor cores
    (:data:`MIXED_FLOAT16_CAPABILITY`), float32 on a CPU; anything else is itself.

    >>> resolve_precision("auto", [(8, 0), (8, 0)]), resolve_precision("auto", [(6, 1)]), resolve_precision("auto", [])
    ('mixed_float16', 'float32', 'float32')
    >>> resolve_precision("mixed_bfloat16", [])
    'mixed_bfloat16'
    """
    if setting != "auto":
        return setting
    capabilities = gpu_capabilities() if capabilities is None else capabilities
    fast = bool(capabilities) and all(tuple(c) >= MIXED_FLOAT16_CAPABILITY for c in capabilities)
    return "mixed_float16" if fast else "float32"


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    """Keras' global dtype policy set to ``policy`` while layers are made (built or loaded), then back: each layer
    keeps the policy it was made with, and nothing else in the process (an export, a prediction) inherits it."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def replica_strategy(devices: Sequence[str]):
    """``tf.distribute.MirroredStrategy`` over ``devices`` when there are several, else None (TF's default)."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=list(devices)) if len(devices) > 1 else None


def use_replicas(devices: Sequence[str]) -> None:
    """Train this process's candidates on ``devices`` (replicas of one model): what :func:`training_scope` uses,
    instead of every GPU TensorFlow sees. For tests and benchmarks that split a CPU into logical devices."""
    global _STRATEGY
    _STRATEGY = replica_strategy(devices) or False


def _strategy():
    global _STRATEGY
    if _STRATEGY is None:
        import tensorflow as tf

        _STRATEGY = replica_strategy([d.name for d in tf.config.list_logical_devices("GPU")]) or False
    return _STRATEGY or None


@contextlib.contextmanager
def training_scope(precision: str) -> Iterator[None]:
    """Where a candidate to train is built or loaded: its variables mirrored over the process's GPUs when it has
    more than one (``--gpus-per-trial 2`` trains on both), its layers made under the ``precision`` policy (a
    resolved one: :func:`resolve_precision`). A checkpoint must be loaded under the same policy as it was built:
    loaded under another, a mixed_float16 model loses its loss-scale optimizer and Keras skips every optimizer
    variable (measured with Keras 3.15)."""
    strategy = _strategy()
    with strategy.scope() if strategy is not None else contextlib.nullcontext(), precision_policy(precision):
        yield


def concurrent_trials(resources: Mapping[str, float], cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials at once fill a cluster with ``resources`` (``ray.cluster_resources()``): by its GPUs when a
    trial takes some, by its CPUs otherwise; at least 1 (a cluster whose GPU workers have not started yet).

    >>> concurrent_trials({"CPU": 32.0, "GPU": 4.0}, 4, 1), concurrent_trials({"CPU": 32.0, "GPU": 4.0}, 4, 0.5)
    (4, 8)
    >>> concurrent_trials({"CPU": 2.0}, 1, 0), concurrent_trials({"CPU": 8.0, "GPU": 8.0}, 4, 1)
    (2, 2)
    """
    fits = []
    if gpus_per_trial > 0:
        fits.append(resources.get("GPU", 0.0) / gpus_per_trial)
    if cpus_per_trial > 0:
        fits.append(resources.get("CPU", 0.0) / cpus_per_trial)
    # A small tolerance: Ray's resources are fixed-point, 0.1 GPU ten times is 1.0.
    return max(1, int(min(fits) + 1e-9)) if fits else 1


def require_cluster_gpus(cpus: float, gpus: float, timeout_s: float = 300.0) -> None:
    """Before any trial starts: one task holding a trial's resources asks TensorFlow what it sees, and a cluster
    whose TensorFlow cannot see the GPUs Ray gives is refused in one line (:func:`require_visible_gpus`), not
    trial by trial. Skipped when the cluster has too few GPUs now (an autoscaler may add GPU workers as trials
    wait for them) or the probe cannot be placed within ``timeout_s``: every trial checks again as it starts."""
    if gpus <= 0:
        return
    import ray

    if ray.cluster_resources().get("GPU", 0.0) < gpus:
        return
    probe = ray.remote(_visible_gpus).options(num_cpus=cpus, num_gpus=gpus)
    try:
        visible, gpu_ids = ray.get(probe.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        return
    try:
        require_visible_gpus(gpus, gpu_ids, visible)
    except UserError as exc:
        raise UserError(f"--gpus-per-trial {gpus:g}: {exc}".replace("this trial holds", "a trial would hold")) from None


def _visible_gpus() -> tuple[list[str], list]:
    """In a Ray task: the GPUs TensorFlow sees there, and the ids Ray gave the task."""
    import ray
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")], list(ray.get_gpu_ids())
