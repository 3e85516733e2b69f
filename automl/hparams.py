"""The hyperparameters of one candidate CNN: their names, domains and defaults, validated in one place.

A candidate is described by a flat mapping of hyperparameter names to values, the form a search
space samples and a spec file writes. :func:`ModelConfig.from_params` checks that mapping against
:data:`HYPERPARAMETERS` and resolves it into a typed, frozen :class:`ModelConfig`; the model
builder, the trial and every search engine consume only that object.

Per-block and per-dense-layer hyperparameters take a single value (the same for every block), a
list with one value per block, or indexed overrides ``NAME_I`` (1-based), so that a search space
can give block 4 its own dropout that exists only when there are at least 4 blocks::

    >>> cfg = ModelConfig.from_params({"conv_blocks": 3, "block_dropout": 0.1, "block_dropout_3": 0.3})
    >>> cfg.block_dropout
    (0.1, 0.1, 0.3)
    >>> cfg.filters  # base_filters * filter_growth ** block
    (32, 64, 128)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automl.errors import SpecError

OPTIMIZERS = ("adam", "nadam", "rmsprop", "sgd", "adamax")
ACTIVATIONS = ("relu", "elu", "selu", "leaky_relu", "gelu", "swish", "tanh")
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "random_uniform",
    "random_normal",
    "orthogonal",
)
IMBALANCE_STRATEGIES = ("none", "class_weight", "oversample", "both")


@dataclass(frozen=True)
class Hyperparameter:
    """The domain of one hyperparameter.

    ``per`` is ``"block"`` or ``"dense"`` for values that may differ per conv block or dense layer.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    per: str | None = None

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` coerced to this hyperparameter's type, or raise :class:`SpecError`."""
        return check_domain(value, self.type, where, self.choices, self.low, self.high)


def check_domain(
    value: Any, kind: type, where: str, choices: tuple | None = None, low: float | None = None,
    high: float | None = None,
) -> Any:
    """``value`` checked against a type, choices and bounds, shared by hyperparameters and spec settings.

    Booleans are not numbers here, ints are accepted where floats are, and NaN or infinity is never
    a valid number (YAML's ``.nan`` and ``.inf`` would otherwise pass every comparison or fail late).
    """
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise SpecError(f"{where}: expected {kind.__name__}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise SpecError(f"{where}: expected a finite number, got {value!r}")
    if choices is not None and value not in choices:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if low is not None and value < low:
        raise SpecError(f"{where}: {value!r} is below the minimum {low}")
    if high is not None and value > high:
        raise SpecError(f"{where}: {value!r} is above the maximum {high}")
    return value


#: Every hyperparameter a candidate can have, by name.
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    hp.name: hp
    for hp in [
        # Convolutional trunk: conv_blocks blocks of convs_per_block convolutions, then pooling.
        Hyperparameter("conv_blocks", int, 3, "number of conv blocks (each ends in a pooling layer)", low=1, high=10),
        Hyperparameter("convs_per_block", int, 2, "convolutions per block", low=1, high=6, per="block"),
        Hyperparameter("filters", int, None, "filters per block (default: base_filters * filter_growth**i)",
                       low=1, high=2048, per="block"),
        Hyperparameter("base_filters", int, 32, "filters of the first block", low=1, high=2048),
        Hyperparameter("filter_growth", float, 2.0, "factor between the filters of consecutive blocks",
                       low=1.0, high=4.0),
        Hyperparameter("kernel_size", int, 3, "square kernel size of the convolutions", low=1, high=11, per="block"),
        Hyperparameter("padding", str, "same", "convolution padding", choices=("same", "valid")),
        Hyperparameter("pool_type", str, "max", "pooling at the end of each block", choices=("max", "avg")),
        Hyperparameter("pool_size", int, 2, "pooling window and stride", low=2, high=4),
        Hyperparameter("batch_norm", bool, False, "batch normalisation after every convolution"),
        Hyperparameter("block_dropout", float, 0.0, "dropout after each block's pooling",
                       low=0.0, high=0.9, per="block"),
        # Head.
        Hyperparameter("head", str, "flatten", "how the trunk's maps reach the dense layers",
                       choices=("flatten", "gap")),
        Hyperparameter("dense_layers", int, 1, "hidden dense layers before the output", low=0, high=4),
        Hyperparameter("dense_units", int, 128, "units of each hidden dense layer", low=1, high=8192, per="dense"),
        Hyperparameter("dense_dropout", float, 0.5, "dropout after each hidden dense layer",
                       low=0.0, high=0.9, per="dense"),
        Hyperparameter("activation", str, "relu", "activation of hidden layers", choices=ACTIVATIONS),
        Hyperparameter("initializer", str, "glorot_uniform", "kernel initializer of conv and dense layers",
                       choices=INITIALIZERS),
        # Optimisation.
        Hyperparameter("optimizer", str, "adam", "optimizer", choices=OPTIMIZERS),
        Hyperparameter("learning_rate", float, 1e-3, "initial learning rate", low=1e-7, high=1.0),
        Hyperparameter("momentum", float, 0.9, "momentum (sgd only)", low=0.0, high=0.999),
        Hyperparameter("batch_size", int, 64, "training batch size", low=1, high=4096),
        # Class imbalance (seed 003's five strategies: none; oversample to 1000; oversample to the
        # majority; class weights; class weights + oversample to 1000).
        Hyperparameter("imbalance", str, "none", "none | class_weight | oversample | both",
                       choices=IMBALANCE_STRATEGIES),
        Hyperparameter("oversample_to", int, 0,
                       "oversample classes smaller than this up to it; 0 = up to the majority class",
                       low=0, high=10**7),
        # Augmentation: Keras preprocessing layers, active only while training.
        Hyperparameter("flip_horizontal", bool, False, "random horizontal flips"),
        Hyperparameter("flip_vertical", bool, False, "random vertical flips"),
        Hyperparameter("rotation", float, 0.0, "random rotation range in degrees (0 = off)", low=0.0, high=180.0),
        Hyperparameter("zoom", float, 0.0, "random zoom range as a fraction (0 = off)", low=0.0, high=0.9),
        Hyperparameter("shift", float, 0.0, "random shift range as a fraction of width and height (0 = off)",
                       low=0.0, high=0.5),
    ]
}

_INDEXED = re.compile(r"^(?P<name>[a-z_]+?)_(?P<index>[1-9][0-9]*)$")


def parse_name(name: str) -> tuple[Hyperparameter, int | None]:
    """Resolve a hyperparameter name, possibly indexed (``block_dropout_4``), to its domain and index."""
    if name in HYPERPARAMETERS:
        return HYPERPARAMETERS[name], None
    match = _INDEXED.match(name)
    if match and match["name"] in HYPERPARAMETERS and HYPERPARAMETERS[match["name"]].per:
        return HYPERPARAMETERS[match["name"]], int(match["index"])
    raise KeyError(name)


def check_value(name: str, value: Any, where: str) -> Any:
    """Validate one value of hyperparameter ``name`` (a list is allowed for per-block ones)."""
    try:
        hp, index = parse_name(name)
    except KeyError:
        raise SpecError(f"{where}: unknown hyperparameter {name!r} (known: {', '.join(HYPERPARAMETERS)})") from None
    if isinstance(value, list) and hp.per and index is None:
        if not value:
            raise SpecError(f"{where}: the list is empty")
        return [hp.check(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return hp.check(value, where)


@dataclass(frozen=True)
class ModelConfig:
    """One fully resolved candidate: every per-block value expanded to one entry per block."""

    conv_blocks: int
    convs_per_block: tuple[int, ...]
    filters: tuple[int, ...]
    kernel_size: tuple[int, ...]
    padding: str
    pool_type: str
    pool_size: int
    batch_norm: bool
    block_dropout: tuple[float, ...]
    head: str
    dense_layers: int
    dense_units: tuple[int, ...]
    dense_dropout: tuple[float, ...]
    activation: str
    initializer: str
    optimizer: str
    learning_rate: float
    momentum: float
    batch_size: int
    imbalance: str
    oversample_to: int
    flip_horizontal: bool
    flip_vertical: bool
    rotation: float
    zoom: float
    shift: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "hyperparameters") -> ModelConfig:
        """Validate a flat mapping of hyperparameters and resolve it; missing names take defaults."""
        checked = {name: check_value(name, value, f"{where}.{name}") for name, value in params.items()}
        if "filters" in checked and ("base_filters" in checked or "filter_growth" in checked):
            raise SpecError(f"{where}: give either filters or base_filters/filter_growth, not both")
        scalars = {
            name: checked.get(name, hp.default) for name, hp in HYPERPARAMETERS.items() if hp.per is None
        }
        n_blocks, n_dense = scalars["conv_blocks"], scalars["dense_layers"]
        overrides = {}
        for name, value in checked.items():
            hp, index = parse_name(name)
            if index is not None:
                overrides[hp.name, index] = value
        default_filters = [
            max(1, round(scalars["base_filters"] * scalars["filter_growth"] ** i)) for i in range(n_blocks)
        ]

        def expand(name: str, length: int, default: Any) -> tuple:
            value = checked.get(name, default)
            if isinstance(value, list):
                if len(value) != length:
                    count = "conv_blocks" if HYPERPARAMETERS[name].per == "block" else "dense_layers"
                    raise SpecError(
                        f"{where}.{name}: has {len(value)} values but {count} is {length}; give one per "
                        "layer or a single value"
                    )
                values = list(value)
            else:
                values = [value] * length
            for (base, i), val in overrides.items():
                # A conditional entry for a block that does not exist is dropped, not an error:
                # search spaces sample block_dropout_4 only when conv_blocks >= 4.
                if base == name and i <= length:
                    values[i - 1] = val
            return tuple(values)

        per_values = {
            "convs_per_block": expand("convs_per_block", n_blocks, HYPERPARAMETERS["convs_per_block"].default),
            "filters": expand("filters", n_blocks, default_filters),
            "kernel_size": expand("kernel_size", n_blocks, HYPERPARAMETERS["kernel_size"].default),
            "block_dropout": expand("block_dropout", n_blocks, HYPERPARAMETERS["block_dropout"].default),
            "dense_units": expand("dense_units", n_dense, HYPERPARAMETERS["dense_units"].default),
            "dense_dropout": expand("dense_dropout", n_dense, HYPERPARAMETERS["dense_dropout"].default),
        }
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in scalars.items() if k in fields} | per_values
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        """The flat, JSON-friendly form (lists for per-layer values); ``from_params`` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def check_image_size(self, height: int, width: int, where: str = "hyperparameters") -> None:
        """Reject a trunk whose convolutions and poolings shrink the image to nothing."""
        h, w = height, width
        for block in range(self.conv_blocks):
            if self.padding == "valid":
                shrink = self.convs_per_block[block] * (self.kernel_size[block] - 1)
                h, w = h - shrink, w - shrink
                if h < 1 or w < 1:
                    raise SpecError(
                        f"{where}: block {block + 1}'s 'valid' convolutions shrink a {height}x{width} "
                        "image to nothing; use padding: same, fewer blocks or a larger image_size"
                    )
            h, w = h // self.pool_size, w // self.pool_size
            if h < 1 or w < 1:
                raise SpecError(
                    f"{where}: {self.conv_blocks} conv blocks with pool_size {self.pool_size} are too deep "
                    f"for {height}x{width} images (block {block + 1}'s pooling leaves nothing); use at most "
                    f"{block} blocks, a smaller pool_size or a larger image_size"
                )

