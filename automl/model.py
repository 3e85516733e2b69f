"""From a :class:`~automl.hparams.ModelConfig` to a compiled ``keras.Model``. Knows nothing of Ray.

The model takes images as float pixel values 0-255 at the configured size. Each family builds its
own trunk, and every trunk ends in the same head (flatten or global average, dense layers) and the
same output: one probability per class, a binary model's single sigmoid unit expanded to (benign,
malignant). Everything a picture goes through is a layer of the model, so the exported model and
``automl predict`` apply exactly what training did:

- optional colour constancy (:class:`ShadesOfGray`), in training and inference;
- ``cnn`` and ``resnet``: scaling to [0, 1], augmentation (active only while training), the trunk;
- ``backbone``: augmentation on 0-255 values, then :class:`BackboneInput` (resize to
  ``backbone_input_size`` and the backbone's own ``preprocess_input``), then the
  ``keras.applications`` model (layer ``backbone``), with its last ``trainable_layers`` trainable.

Seed 000's proposed model (4 blocks of 2 conv3x3, 32 filters doubling, max-pool, dropout rising
0.1-0.4, flatten, dense 512, dropout 0.5, Adam 1e-4)::

    >>> from automl.hparams import ModelConfig
    >>> cfg = ModelConfig.from_params({"conv_blocks": 4, "block_dropout": [0.1, 0.2, 0.3, 0.4],
    ...                                "dense_units": 512, "learning_rate": 1e-4})
    >>> build_model(cfg, (75, 100), n_classes=7).count_params()  # doctest: +SKIP
    4322087
"""

from __future__ import annotations

import importlib
import math

import keras
import numpy as np

from automl.backbones import BACKBONES
from automl.data import resize_tensor
from automl.hparams import ModelConfig

#: The name of a backbone model's ``keras.applications`` layer inside a candidate.
BACKBONE_LAYER = "backbone"
_EPSILON = 1e-6
#: The smallest class share :func:`set_output_prior` starts an output at (HAM10000's rarest class is 1.1%).
_PRIOR_FLOOR = 1e-4


@keras.saving.register_keras_serializable(package="automl")
class TwoClassProbabilities(keras.layers.Layer):
    """Turns one sigmoid probability p into (1 - p, p), so binary models output one column per class."""

    def call(self, p):
        return keras.ops.concatenate([1.0 - p, p], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


@keras.saving.register_keras_serializable(package="automl")
class ShadesOfGray(keras.layers.Layer):
    """Shades of Gray colour constancy (Finlayson & Trezzi, 2004), per image, in training and inference.

    Each channel's illuminant is the Minkowski mean of its pixels, e_c = mean(I_c ** p) ** (1 / p); the
    channel is multiplied by |e| / (sqrt(3) e_c), which leaves a grey illuminant as it is, and clipped to
    0-255: the preprocessing of the ISIC 2018 and 2019 winners (p = 6). 0-255 pixels in and out.
    """

    def __init__(self, p: float = 6.0, **kwargs):
        super().__init__(**kwargs)
        self.p = float(p)

    def call(self, images):
        ops = keras.ops
        x = ops.cast(images, "float32")
        # On 0-1 values the gains are the same, and 255 ** p would overflow float32 above p = 16.
        illuminant = ops.mean((x / 255.0) ** self.p, axis=(1, 2), keepdims=True) ** (1.0 / self.p) + _EPSILON
        norm = ops.sqrt(ops.sum(ops.square(illuminant), axis=-1, keepdims=True))
        return ops.clip(x * norm / (illuminant * math.sqrt(3.0)), 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"p": self.p}


@keras.saving.register_keras_serializable(package="automl")
class BackboneInput(keras.layers.Layer):
    """A backbone's input: 0-255 images resized to its input size as the data cache resizes them
    (:func:`automl.data.resize_tensor`), then its own ``keras.applications`` ``preprocess_input``."""

    def __init__(self, backbone: str, size: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def call(self, images):
        if self.size is not None:
            images = resize_tensor(images, self.size)
        module = importlib.import_module(f"keras.applications.{BACKBONES[self.backbone].module}")
        return module.preprocess_input(keras.ops.cast(images, "float32"))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(self.size or input_shape[1:3]), input_shape[-1])

    def get_config(self):
        return super().get_config() | {"backbone": self.backbone, "size": list(self.size) if self.size else None}


def build_model(
    config: ModelConfig, image_size: tuple[int, int], n_classes: int, name: str = "candidate"
) -> keras.Model:
    """A compiled model for ``n_classes`` (2 means a single sigmoid unit) at ``image_size`` = (h, w)."""
    config.check_image_size(*image_size)
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = inputs
    if config.colour_constancy == "shades_of_gray":
        x = ShadesOfGray(config.sog_p, name="colour_constancy")(x)
    trunk = {"cnn": _cnn_trunk, "resnet": _resnet_trunk, "backbone": _backbone_trunk}[config.family]
    x = trunk(config, x, tuple(image_size))
    model = keras.Model(inputs, _head(config, x, n_classes), name=name)
    compile_model(model, config)
    return model


def compile_model(model: keras.Model, config: ModelConfig, learning_rate: float | None = None) -> None:
    """(Re)compile with a fresh optimizer: at build, and when a backbone's warm-up ends."""
    model.compile(
        optimizer=make_optimizer(config, learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def make_optimizer(config: ModelConfig, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    lr = config.learning_rate if learning_rate is None else learning_rate
    clip = {"clipnorm": config.clipnorm} if config.clipnorm > 0 else {}
    return {
        "adam": lambda: keras.optimizers.Adam(lr, **clip),
        "nadam": lambda: keras.optimizers.Nadam(lr, **clip),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, **clip),
        "adamax": lambda: keras.optimizers.Adamax(lr, **clip),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=config.momentum, **clip),
    }[config.optimizer]()


def _cnn_trunk(config: ModelConfig, x, image_size: tuple[int, int]):
    """Plain VGG-style blocks: convs_per_block convolutions, then pooling and dropout."""
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(x)
    for layer in _augmentation(config, (0.0, 1.0)):
        x = layer(x)
    for b in range(config.conv_blocks):
        for c in range(config.convs_per_block[b]):
            conv_name = f"block{b + 1}_conv{c + 1}"
            x = keras.layers.Conv2D(
                config.filters[b],
                config.kernel_size[b],
                padding=config.padding,
                kernel_initializer=config.initializer,
                activation=None if config.batch_norm else config.activation,
                name=conv_name,
            )(x)
            if config.batch_norm:
                x = keras.layers.BatchNormalization(name=f"{conv_name}_bn")(x)
                x = keras.layers.Activation(config.activation, name=f"{conv_name}_act")(x)
        pool = keras.layers.MaxPooling2D if config.pool_type == "max" else keras.layers.AveragePooling2D
        x = pool(pool_size=config.pool_size, name=f"block{b + 1}_pool")(x)
        if config.block_dropout[b] > 0:
            x = keras.layers.Dropout(config.block_dropout[b], name=f"block{b + 1}_dropout")(x)
    return x


def _resnet_trunk(config: ModelConfig, x, image_size: tuple[int, int]):
    """A residual network of basic blocks (He et al., 2016), from scratch; 'same' padding throughout."""
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(x)
    for layer in _augmentation(config, (0.0, 1.0)):
        x = layer(x)

    def conv_bn(x, filters: int, kernel: int, stride: int, name: str, activate: bool = True):
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                kernel_initializer=config.initializer, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.Activation(config.activation, name=f"{name}_act")(x) if activate else x

    x = conv_bn(x, config.resnet_width, config.resnet_stem_kernel, config.resnet_stem_stride, "stem_conv")
    if config.resnet_stem_pool:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage in range(config.resnet_stages):
        filters = config.resnet_width * 2**stage
        for block in range(config.resnet_blocks[stage]):
            name, stride = f"stage{stage + 1}_block{block + 1}", 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, filters, 3, stride, f"{name}_conv1")
            y = conv_bn(y, filters, 3, 1, f"{name}_conv2", activate=False)
            # A projection shortcut where the block changes the shape, identity elsewhere.
            shortcut = x if stride == 1 and x.shape[-1] == filters else conv_bn(
                x, filters, 1, stride, f"{name}_shortcut", activate=False)
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = keras.layers.Activation(config.activation, name=f"{name}_out")(x)
    return x


def _backbone_trunk(config: ModelConfig, x, image_size: tuple[int, int]):
    """Augmentation on 0-255 values, the backbone's own input preprocessing, then the backbone."""
    for layer in _augmentation(config, (0.0, 255.0)):
        x = layer(x)
    size = config.backbone_size(*image_size)
    x = BackboneInput(config.backbone, size if size != image_size else None, name="backbone_input")(x)
    return make_backbone(config, size)(x)


def make_backbone(config: ModelConfig, size: tuple[int, int]) -> keras.Model:
    """The ``keras.applications`` model without top, its weights loaded and its trainable layers set.

    ``weights: imagenet`` uses Keras' own file, fetched once per node into Keras' cache
    (:func:`automl.weights.ensure_imagenet`); ``weights: PATH`` loads that file with ``load_weights``.
    """
    from automl import weights

    constructor = getattr(keras.applications, config.backbone)
    if config.weights == "imagenet":
        weights.ensure_imagenet(config.backbone, size)
    elif config.weights != "none":
        weights.check_file(config.weights, config.backbone)  # before the build, not after
    backbone = constructor(include_top=False, weights="imagenet" if config.weights == "imagenet" else None,
                           input_shape=(*size, 3), name=BACKBONE_LAYER)
    if config.weights not in ("imagenet", "none"):
        weights.load_weights_file(backbone, config.weights, config.backbone)
    set_trainable_layers(backbone, 0 if warms_up(config) else config.trainable_layers)
    return backbone


def warms_up(config: ModelConfig) -> bool:
    """Whether the candidate trains its head alone for ``warmup_epochs`` before its backbone layers unfreeze."""
    return config.family == "backbone" and config.warmup_epochs > 0 and config.trainable_layers != 0


def set_trainable_layers(backbone: keras.Model, count: int) -> None:
    """Make the last ``count`` layers trainable (-1: all) and freeze the rest. Keras runs a frozen
    BatchNormalization layer in inference mode, so the frozen part keeps its statistics."""
    layers = backbone.layers
    first = len(layers) if count == 0 else 0 if count < 0 else max(0, len(layers) - count)
    backbone.trainable = True  # a functional model does not pass this on to its layers: each is set below
    for i, layer in enumerate(layers):
        layer.trainable = i >= first


def _head(config: ModelConfig, x, n_classes: int):
    """The head every family shares: flatten or global average, dense layers, one output per class."""
    init = config.initializer
    x = (keras.layers.Flatten if config.head == "flatten" else keras.layers.GlobalAveragePooling2D)(name="head")(x)
    for d in range(config.dense_layers):
        x = keras.layers.Dense(
            config.dense_units[d], activation=config.activation, kernel_initializer=init, name=f"dense{d + 1}"
        )(x)
        if config.dense_dropout[d] > 0:
            x = keras.layers.Dropout(config.dense_dropout[d], name=f"dense{d + 1}_dropout")(x)
    # The output in float32 whatever the precision policy: a softmax in float16 rounds small probabilities to 0
    # and the loss of those classes to infinity (Keras' mixed-precision guide).
    if n_classes == 2:
        p = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init, name="malignant", dtype="float32")(x)
        return TwoClassProbabilities(name="probabilities", dtype="float32")(p)
    return keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init, name="probabilities",
                              dtype="float32")(x)


def set_output_prior(model: keras.Model, class_mix) -> None:
    """Start the output layer at ``class_mix``, the class mix the loss sees (:func:`automl.trial.expected_class_mix`),
    instead of at uniform probabilities.

    Before the features say anything, the loss is lowest when the output is that mix, so the model does not
    spend its first steps learning it through the bias (nor the layers below compensating meanwhile). The
    softmax bias is log(mix), shifted to 0 for the largest class (softmax ignores a constant shift). Class
    weights make the mix uniform (``class_weight``, ``both``): their bias stays zero, Keras' own start. A
    binary model's sigmoid bias is the log-odds of its second class. A class absent from training starts
    at :data:`_PRIOR_FLOOR` instead of minus infinity.
    """
    log_mix = np.log(np.maximum(np.asarray(class_mix, dtype=np.float64), _PRIOR_FLOOR))
    if len(log_mix) == 2:
        model.get_layer("malignant").bias.assign(np.array([log_mix[1] - log_mix[0]], np.float32))
    else:
        model.get_layer("probabilities").bias.assign((log_mix - log_mix.max()).astype(np.float32))


def _augmentation(config: ModelConfig, value_range: tuple[float, float]) -> list[keras.layers.Layer]:
    """Random flips, rotation, zoom, shift and colour, on pixels in ``value_range``; Keras runs these
    layers only when training."""
    layers = []
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal", (False, True): "vertical"}
    mode = flip.get((config.flip_horizontal, config.flip_vertical))
    if mode:
        layers.append(keras.layers.RandomFlip(mode, name="augment_flip"))
    # "nearest" fill, as Keras' ImageDataGenerator used in the seed papers.
    if config.rotation > 0:
        layers.append(keras.layers.RandomRotation(config.rotation / 360.0, fill_mode="nearest",
                                                  name="augment_rotation"))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="nearest", name="augment_zoom"))
    if config.shift > 0:
        layers.append(keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="nearest",
                                                     name="augment_shift"))
    return layers + _colour_augmentation(config, value_range)


def _colour_augmentation(config: ModelConfig, value_range: tuple[float, float]) -> list[keras.layers.Layer]:
    """Brightness, contrast, saturation and hue jitter, with torchvision ColorJitter's meaning of the strengths."""
    layers = []
    if config.brightness > 0:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=value_range,
                                                    name="augment_brightness"))
    if config.contrast > 0:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=value_range, name="augment_contrast"))
    if config.saturation > 0:
        # Keras' factor f scales saturation by f / (1 - f) (0.5 = unchanged): [1 - s, 1 + s] is this range.
        s = config.saturation
        layers.append(keras.layers.RandomSaturation(((1 - s) / (2 - s), (1 + s) / (2 + s)), value_range=value_range,
                                                    name="augment_saturation"))
    if config.hue > 0:
        # Keras shifts hue by up to half its factor, either way, in units of the whole colour wheel.
        layers.append(keras.layers.RandomHue(min(1.0, 2 * config.hue), value_range=value_range, name="augment_hue"))
    return layers
