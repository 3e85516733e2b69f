"""The hyperparameters of one candidate: their names, domains and defaults, validated in one place.

A candidate is one of three families (``family``): a plain CNN, a residual network from scratch, or a
``keras.applications`` backbone; each reads its own hyperparameters, and all share the head, the
optimiser, the imbalance handling and the augmentation.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from automl.backbones import BACKBONES
from automl.errors import InfeasibleError, SpecError

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
FAMILIES = ("cnn", "resnet", "backbone")
COLOUR_CONSTANCY = ("none", "shades_of_gray")
#: How many values a per-layer hyperparameter has: the hyperparameter that counts its layers.
PER = {"block": "conv_blocks", "dense": "dense_layers", "stage": "resnet_stages"}


def _weights(value: Any, where: str) -> str:
    """``imagenet``, ``none`` (YAML's null too) or the path of a ``.h5`` weights file."""
    if value is None:
        return "none"
    if not isinstance(value, str) or not (value in ("imagenet", "none") or value.endswith(".h5")):
        raise SpecError(f"{where}: expected imagenet, none or the path of a .h5 weights file (e.g. "
                        f"resnet50_notop.weights.h5), got {value!r}")
    return value


def _trainable_layers(value: Any, where: str) -> int:
    """A layer count, or ``all`` (stored as -1, so that the column stays numeric)."""
    return check_domain(-1 if value == "all" else value, int, where, low=-1, high=100_000)


@dataclass(frozen=True)
class Hyperparameter:
    """The domain of one hyperparameter.

    ``per`` is ``"block"``, ``"dense"`` or ``"stage"`` for values that may differ per conv block, dense
    layer or residual stage (:data:`PER`). ``parse`` replaces the plain domain check for values with a
    form of their own.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    per: str | None = None
    parse: Callable[[Any, str], Any] | None = None

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` coerced to this hyperparameter's type, or raise :class:`SpecError`."""
        if self.parse is not None:
            return self.parse(value, where)
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
        # The model family: a trunk of its own (the hyperparameters below that name it), then the same head.
        Hyperparameter("family", str, "cnn", "cnn (plain conv blocks) | resnet (residual, from scratch) | "
                       "backbone (a keras.applications model)", choices=FAMILIES),
        # cnn: conv_blocks blocks of convs_per_block convolutions, then pooling.
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
        # resnet: a stem, then stages of basic blocks (two 3x3 convolutions and a shortcut, batch norm after each
        # convolution); every stage after the first halves the maps and doubles the width. MedMNIST's ResNet-18
        # for 28 px is the defaults with head: gap and dense_layers: 0.
        Hyperparameter("resnet_stages", int, 4, "resnet: stages", low=1, high=6),
        Hyperparameter("resnet_blocks", int, 2, "resnet: basic blocks per stage", low=1, high=16, per="stage"),
        Hyperparameter("resnet_width", int, 64, "resnet: filters of the stem and the first stage", low=4, high=512),
        Hyperparameter("resnet_stem_kernel", int, 3, "resnet: kernel of the stem convolution (7 in ImageNet ResNets)",
                       low=1, high=7),
        Hyperparameter("resnet_stem_stride", int, 1, "resnet: stride of the stem convolution (2 quarters the cost)",
                       low=1, high=2),
        Hyperparameter("resnet_stem_pool", bool, False, "resnet: 3x3 max-pool with stride 2 after the stem"),
        # backbone: a keras.applications model without its top, its preprocess_input inside the graph.
        Hyperparameter("backbone", str, None, "backbone: the keras.applications model", choices=tuple(BACKBONES)),
        Hyperparameter("backbone_input_size", int, 0, "backbone: square size the images are resized to inside the "
                       "model (0 = the run's image size)", low=0, high=2048),
        Hyperparameter("weights", str, "imagenet", "backbone: imagenet | none | PATH of a .h5 file of the model's "
                       "weights without top (what keras.applications' *_notop.h5 and save_weights hold)",
                       parse=_weights),
        Hyperparameter("trainable_layers", int, -1, "backbone: how many of its last layers train (0 = frozen, "
                       "all or -1 = every layer); batch norm in the frozen part runs in inference mode",
                       parse=_trainable_layers),
        Hyperparameter("warmup_epochs", int, 0, "backbone: first epochs train the head alone, then trainable_layers "
                       "unfreeze at learning_rate * finetune_lr_factor (0 = no warm-up)", low=0, high=10_000),
        Hyperparameter("finetune_lr_factor", float, 0.1, "backbone: learning-rate factor after the warm-up",
                       low=1e-4, high=1.0),
        # Head, shared by every family.
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
        Hyperparameter("clipnorm", float, 0.0, "clip each gradient to this norm, for every optimizer (0 = off)",
                       low=0.0, high=1e6),
        Hyperparameter("batch_size", int, 64, "training batch size", low=1, high=4096),
        # Class imbalance (seed 003's five strategies: none; oversample to 1000; oversample to the
        # majority; class weights; class weights + oversample to 1000).
        Hyperparameter("imbalance", str, "none", "none | class_weight | oversample | both",
                       choices=IMBALANCE_STRATEGIES),
        Hyperparameter("oversample_to", int, 0,
                       "oversample classes smaller than this as if lifted to it (an epoch keeps the split's size); "
                       "0 = to the majority class",
                       low=0, high=10**7),
        # Augmentation: Keras preprocessing layers, active only while training.
        Hyperparameter("flip_horizontal", bool, False, "random horizontal flips"),
        Hyperparameter("flip_vertical", bool, False, "random vertical flips"),
        Hyperparameter("rotation", float, 0.0, "random rotation range in degrees (0 = off)", low=0.0, high=180.0),
        Hyperparameter("zoom", float, 0.0, "random zoom range as a fraction (0 = off)", low=0.0, high=0.9),
        Hyperparameter("shift", float, 0.0, "random shift range as a fraction of width and height (0 = off)",
                       low=0.0, high=0.5),
        Hyperparameter("brightness", float, 0.0, "random brightness shift up to this fraction of the pixel range "
                       "(0 = off)", low=0.0, high=1.0),
        Hyperparameter("contrast", float, 0.0, "random contrast factor in [1 - c, 1 + c] (0 = off)",
                       low=0.0, high=1.0),
        Hyperparameter("saturation", float, 0.0, "random saturation factor in [1 - s, 1 + s] (0 = off)",
                       low=0.0, high=1.0),
        Hyperparameter("hue", float, 0.0, "random hue rotation up to this fraction of the colour wheel either way "
                       "(0 = off)", low=0.0, high=0.5),
        # Colour constancy: a layer of the model, so training, export and predict apply the same transform.
        Hyperparameter("colour_constancy", str, "none", "none | shades_of_gray (per-image white balance, in "
                       "training and inference)", choices=COLOUR_CONSTANCY),
        Hyperparameter("sog_p", float, 6.0, "shades of gray: Minkowski norm p (1 = grey world, large = max-RGB)",
                       low=1.0, high=20.0),
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
    """One fully resolved candidate: every per-layer value expanded to one entry per block, layer or stage.

    Every family's fields are present (with their defaults); the builder reads those of ``family``.
    """

    family: str
    conv_blocks: int
    convs_per_block: tuple[int, ...]
    filters: tuple[int, ...]
    kernel_size: tuple[int, ...]
    padding: str
    pool_type: str
    pool_size: int
    batch_norm: bool
    block_dropout: tuple[float, ...]
    resnet_stages: int
    resnet_blocks: tuple[int, ...]
    resnet_width: int
    resnet_stem_kernel: int
    resnet_stem_stride: int
    resnet_stem_pool: bool
    backbone: str | None
    backbone_input_size: int
    weights: str
    trainable_layers: int
    warmup_epochs: int
    finetune_lr_factor: float
    head: str
    dense_layers: int
    dense_units: tuple[int, ...]
    dense_dropout: tuple[float, ...]
    activation: str
    initializer: str
    optimizer: str
    learning_rate: float
    momentum: float
    clipnorm: float
    batch_size: int
    imbalance: str
    oversample_to: int
    flip_horizontal: bool
    flip_vertical: bool
    rotation: float
    zoom: float
    shift: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    colour_constancy: str
    sog_p: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "hyperparameters") -> ModelConfig:
        """Validate a flat mapping of hyperparameters and resolve it; missing names take defaults."""
        checked = {name: check_value(name, value, f"{where}.{name}") for name, value in params.items()}
        if "filters" in checked and ("base_filters" in checked or "filter_growth" in checked):
            raise SpecError(f"{where}: give either filters or base_filters/filter_growth, not both")
        scalars = {
            name: checked.get(name, hp.default) for name, hp in HYPERPARAMETERS.items() if hp.per is None
        }
        if scalars["family"] == "backbone" and scalars["backbone"] is None:
            raise SpecError(f"{where}: family backbone needs backbone: NAME (one of {', '.join(BACKBONES)})")
        overrides = {}
        for name, value in checked.items():
            hp, index = parse_name(name)
            if index is not None:
                overrides[hp.name, index] = value
        growth = scalars["filter_growth"]
        default_filters = [max(1, round(scalars["base_filters"] * growth**i)) for i in range(scalars["conv_blocks"])]

        def expand(name: str, default: Any) -> tuple:
            count = PER[HYPERPARAMETERS[name].per]
            length, value = scalars[count], checked.get(name, default)
            if isinstance(value, list):
                if len(value) != length:
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
            name: expand(name, default_filters if name == "filters" else hp.default)
            for name, hp in HYPERPARAMETERS.items() if hp.per
        }
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in scalars.items() if k in fields} | per_values
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        """The flat, JSON-friendly form (lists for per-layer values); ``from_params`` reads it back."""
        # None (no backbone) and empty lists (no dense layers) are what from_params makes of a missing name.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if v is not None and v != ()}

    def check_image_size(self, height: int, width: int, where: str = "hyperparameters") -> None:
        """Reject a candidate that cannot run on ``height`` x ``width`` images (of any family)."""
        {"cnn": self._check_cnn, "resnet": self._check_resnet, "backbone": self._check_backbone}[self.family](
            height, width, where)

    def backbone_size(self, height: int, width: int) -> tuple[int, int]:
        """The size a backbone sees: ``backbone_input_size`` squared, or the image's own size when it is 0."""
        return (self.backbone_input_size,) * 2 if self.backbone_input_size else (height, width)

    def _check_cnn(self, height: int, width: int, where: str) -> None:
        """A trunk whose convolutions and poolings shrink the image to nothing."""
        h, w = height, width
        for block in range(self.conv_blocks):
            if self.padding == "valid":
                shrink = self.convs_per_block[block] * (self.kernel_size[block] - 1)
                h, w = h - shrink, w - shrink
                if h < 1 or w < 1:
                    raise InfeasibleError(
                        f"{where}: block {block + 1}'s 'valid' convolutions shrink a {height}x{width} "
                        "image to nothing; use padding: same, fewer blocks or a larger image_size", "valid_padding"
                    )
            h, w = h // self.pool_size, w // self.pool_size
            if h < 1 or w < 1:
                raise InfeasibleError(
                    f"{where}: {self.conv_blocks} conv blocks with pool_size {self.pool_size} are too deep "
                    f"for {height}x{width} images (block {block + 1}'s pooling leaves nothing); use at most "
                    f"{block} blocks, a smaller pool_size or a larger image_size", "pooling"
                )

    def _check_resnet(self, height: int, width: int, where: str) -> None:
        """A stem and stages that halve a map already down to one pixel ('same' padding never reaches 0)."""
        steps = ["stem"] * (self.resnet_stem_stride == 2) + ["stem pool"] * self.resnet_stem_pool
        steps += [f"stage {s + 1}" for s in range(1, self.resnet_stages)]
        size = min(height, width)
        for step in steps:
            if size == 1:
                raise InfeasibleError(
                    f"{where}: a resnet with {self.resnet_stages} stages (stem stride {self.resnet_stem_stride}, "
                    f"stem pool {str(self.resnet_stem_pool).lower()}) is too deep for {height}x{width} images "
                    f"({step} halves a 1x1 map); use fewer stages, no stem stride or pool, or a larger image_size",
                    "resnet_depth",
                )
            size = math.ceil(size / 2)

    def _check_backbone(self, height: int, width: int, where: str) -> None:
        """A backbone fed images below the smallest input it accepts."""
        backbone = BACKBONES[self.backbone]
        h, w = self.backbone_size(height, width)
        if min(h, w) < backbone.min_size:
            given = f"backbone_input_size {self.backbone_input_size}" if self.backbone_input_size else (
                f"{height}x{width} images")
            raise InfeasibleError(
                f"{where}: {self.backbone} needs inputs of at least {backbone.min_size}x{backbone.min_size}, got "
                f"{given}; set backbone_input_size (the images are resized inside the model) to at least "
                f"{backbone.min_size}, e.g. its ImageNet size {backbone.default_size}", "backbone_input"
            )
