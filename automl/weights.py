"""Backbone weights: ImageNet files fetched once per node into Keras' cache, or one clear line why not.

A candidate of family ``backbone`` with ``weights: imagenet`` loads Keras' own ``*_notop.h5`` file
from ``$KERAS_HOME/models`` (``~/.keras/models``). :func:`require_weights` runs in the search and
retrain drivers before any trial: it fetches every file the space (or the members) can draw, so
that trials on the driver's node find it cached, and a machine that cannot fetch it stops there,
exit code 2, with one line naming the file, where to put it, and ``weights: PATH`` as the other way.
On other nodes of a cluster the first trial that needs a file fetches it under a file lock, so each
node downloads it once, never once per trial.

``AUTOML_WEIGHTS_URL`` points the fetch at a mirror holding the same file names (a cluster without
internet access, an internal artefact store).

``weights: PATH`` is a ``.h5`` file of that ``keras.applications`` model without its top, loaded with
``load_weights``: Keras' own ``*_notop.h5`` files, or a ``.weights.h5`` saved with
``model.get_layer("backbone").save_weights(PATH)`` from a trained candidate.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from automl.backbones import BACKBONES, imagenet_file
from automl.errors import UserError
from automl.hparams import HYPERPARAMETERS, ModelConfig

MIRROR_ENV = "AUTOML_WEIGHTS_URL"


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights: ``$KERAS_HOME/models``, by default ``~/.keras/models``."""
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())
    if not os.access(home if home.exists() else home.parent, os.W_OK):
        home = Path("/tmp/.keras")  # Keras' own fallback when the home folder is read-only
    return home / "models"


def ensure_imagenet(backbone: str, size: tuple[int, int]) -> Path:
    """The cached ImageNet weights of ``backbone`` at input ``size``, fetched first if missing."""
    import keras

    name, url = imagenet_file(backbone, size)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        url = f"{mirror.rstrip('/')}/{name}"
    folder = keras_models_dir()
    path = folder / name
    with _node_lock(folder / f".{name}.lock"):
        if path.is_file():
            return path
        try:
            keras.utils.get_file(name, url, cache_dir=str(folder.parent), cache_subdir=folder.name)
        except Exception as exc:  # noqa: BLE001 - urllib, HTTP and socket errors all mean "not fetched"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
            raise UserError(
                f"weights: imagenet: cannot fetch {name} for {backbone} ({reason}); put that file (from {url}) in "
                f"{folder}/, or set weights: PATH to a .h5 file of {backbone}'s weights without top"
            ) from None
    return path


def check_file(path: str, backbone: str, where: str = "weights") -> Path:
    """``weights: PATH`` exists (checked before the backbone is built), or one line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{where}: {path}: file not found (a .h5 file of {backbone}'s weights without top)")
    return file


def load_weights_file(backbone_model, path: str, backbone: str) -> None:
    """``weights: PATH``: load a ``.h5`` weights file into the backbone, or one line saying why not."""
    check_file(path, backbone)
    try:
        backbone_model.load_weights(str(Path(path).expanduser()))
    except Exception as exc:  # noqa: BLE001 - HDF5 and Keras raise several types for a file that does not fit
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"weights: {path}: not weights of {backbone} without top ({reason})") from None


def require_weights(spec, params: Iterable[Mapping[str, Any]] | None = None) -> None:
    """Before any trial: every ImageNet file the spec's space (or the given members' ``params``) can
    draw is in Keras' cache, and every ``weights: PATH`` exists; else one :class:`UserError` line."""
    image_size = tuple(spec.data.image_size)
    if params is None:
        draws = _space_draws(spec.space)
    else:
        configs = [ModelConfig.from_params(p) for p in params]
        draws = {(c.backbone, c.weights, c.backbone_input_size) for c in configs if c.family == "backbone"}
    for backbone, weights, input_size in sorted(draws, key=str):
        if backbone not in BACKBONES or weights == "none":
            continue
        if weights == "imagenet":
            ensure_imagenet(backbone, (input_size,) * 2 if input_size else image_size)
        else:
            check_file(weights, backbone, f"{spec.source or 'spec'}: hyperparameters.weights")


def _space_draws(space) -> set[tuple]:
    """(backbone, weights, backbone_input_size) triples a space may draw (conditions ignored: a superset)."""

    def values(name: str) -> list:
        dim = space.by_name.get(name)
        return dim.grid() if dim is not None else [HYPERPARAMETERS[name].default]

    if "backbone" not in values("family"):
        return set()
    return {(b, w, s) for b in values("backbone") for w in values("weights") for s in values("backbone_input_size")}


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on this node, so that concurrent trials fetch a file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
