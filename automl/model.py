"""From a :class:`~automl.hparams.ModelConfig` to a compiled ``keras.Model``. Knows nothing of Ray.

The model takes images as float pixel values 0-255 at the configured size; scaling to [0, 1]
and augmentation (active only while training) are layers inside it. It always outputs one
probability per class, so a binary model's single sigmoid unit is expanded to (benign, malignant).

Seed 000's proposed model (4 blocks of 2 conv3x3, 32 filters doubling, max-pool, dropout rising
0.1-0.4, flatten, dense 512, dropout 0.5, Adam 1e-4)::

    >>> from automl.hparams import ModelConfig
    >>> cfg = ModelConfig.from_params({"conv_blocks": 4, "block_dropout": [0.1, 0.2, 0.3, 0.4],
    ...                                "dense_units": 512, "learning_rate": 1e-4})
    >>> build_model(cfg, (75, 100), n_classes=7).count_params()  # doctest: +SKIP
    4322087
"""

from __future__ import annotations

import keras

from automl.hparams import ModelConfig


@keras.saving.register_keras_serializable(package="automl")
class TwoClassProbabilities(keras.layers.Layer):
    """Turns one sigmoid probability p into (1 - p, p), so binary models output one column per class."""

    def call(self, p):
        return keras.ops.concatenate([1.0 - p, p], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


def build_model(
    config: ModelConfig, image_size: tuple[int, int], n_classes: int, name: str = "candidate"
) -> keras.Model:
    """A compiled model for ``n_classes`` (2 means a single sigmoid unit) at ``image_size`` = (h, w)."""
    config.check_image_size(*image_size)
    init = config.initializer
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    for layer in _augmentation(config):
        x = layer(x)
    for b in range(config.conv_blocks):
        for c in range(config.convs_per_block[b]):
            conv_name = f"block{b + 1}_conv{c + 1}"
            x = keras.layers.Conv2D(
                config.filters[b],
                config.kernel_size[b],
                padding=config.padding,
                kernel_initializer=init,
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
    x = (keras.layers.Flatten if config.head == "flatten" else keras.layers.GlobalAveragePooling2D)(name="head")(x)
    for d in range(config.dense_layers):
        x = keras.layers.Dense(
            config.dense_units[d], activation=config.activation, kernel_initializer=init, name=f"dense{d + 1}"
        )(x)
        if config.dense_dropout[d] > 0:
            x = keras.layers.Dropout(config.dense_dropout[d], name=f"dense{d + 1}_dropout")(x)
    if n_classes == 2:
        p = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init, name="malignant")(x)
        outputs = TwoClassProbabilities(name="probabilities")(p)
    else:
        outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init, name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=make_optimizer(config),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def make_optimizer(config: ModelConfig) -> keras.optimizers.Optimizer:
    lr = config.learning_rate
    return {
        "adam": lambda: keras.optimizers.Adam(lr),
        "nadam": lambda: keras.optimizers.Nadam(lr),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
        "adamax": lambda: keras.optimizers.Adamax(lr),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=config.momentum),
    }[config.optimizer]()


def _augmentation(config: ModelConfig) -> list[keras.layers.Layer]:
    """Random flips, rotation, zoom and shift; Keras runs these layers only when training."""
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
    return layers
