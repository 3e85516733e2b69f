"""The ``keras.applications`` models a candidate of family ``backbone`` can use: the one table of them.

For each: the ``keras.applications`` submodule whose ``preprocess_input`` the model runs inside its
graph, the smallest input Keras accepts, the size it was trained at on ImageNet, and the file of
its ImageNet weights without the classifier (the ``*_notop.h5`` Keras downloads to
``~/.keras/models``). No Keras import here: the hyperparameter table and the command line read it
before TensorFlow loads.

>>> BACKBONES["InceptionV3"].min_size, BACKBONES["InceptionV3"].default_size
(75, 299)
>>> imagenet_file("MobileNetV2", (32, 32))[0]  # Keras falls back to the 224 weights below 96 px
'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5'
"""

from __future__ import annotations

from dataclasses import dataclass

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_EFFICIENTNETS = "https://storage.googleapis.com/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    name: str  # the keras.applications constructor
    module: str  # keras.applications.<module>.preprocess_input
    min_size: int
    default_size: int
    weights_file: str  # ImageNet weights without top; MobileNets fill in their input size
    weights_url: str  # the folder Keras downloads it from


def _table(*rows: tuple) -> dict[str, Backbone]:
    return {row[0]: Backbone(*row) for row in rows}


#: Every backbone by its ``keras.applications`` name. File names and URLs are Keras' own (keras/src/applications).
BACKBONES: dict[str, Backbone] = _table(
    ("VGG16", "vgg16", 32, 224, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _KERAS_APPS + "vgg16/"),
    ("VGG19", "vgg19", 32, 224, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", _KERAS_APPS + "vgg19/"),
    ("ResNet50", "resnet", 32, 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", _KERAS_APPS + "resnet/"),
    ("ResNet101", "resnet", 32, 224, "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
     _KERAS_APPS + "resnet/"),
    ("ResNet152", "resnet", 32, 224, "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
     _KERAS_APPS + "resnet/"),
    ("InceptionV3", "inception_v3", 75, 299, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
     _KERAS_APPS + "inception_v3/"),
    ("InceptionResNetV2", "inception_resnet_v2", 75, 299,
     "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5", _KERAS_APPS + "inception_resnet_v2/"),
    ("MobileNet", "mobilenet", 32, 224, "mobilenet_1_0_{rows}_tf_no_top.h5", _KERAS_APPS + "mobilenet/"),
    ("MobileNetV2", "mobilenet_v2", 32, 224, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
     _KERAS_APPS + "mobilenet_v2/"),
    ("DenseNet121", "densenet", 32, 224, "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
     _KERAS_APPS + "densenet/"),
    ("DenseNet169", "densenet", 32, 224, "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
     _KERAS_APPS + "densenet/"),
    ("DenseNet201", "densenet", 32, 224, "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
     _KERAS_APPS + "densenet/"),
    # EfficientNets rescale and normalise inside the model: their preprocess_input passes images through.
    ("EfficientNetB0", "efficientnet", 32, 224, "efficientnetb0_notop.h5", _EFFICIENTNETS),
    ("EfficientNetB1", "efficientnet", 32, 240, "efficientnetb1_notop.h5", _EFFICIENTNETS),
    ("EfficientNetB2", "efficientnet", 32, 260, "efficientnetb2_notop.h5", _EFFICIENTNETS),
    ("EfficientNetB3", "efficientnet", 32, 300, "efficientnetb3_notop.h5", _EFFICIENTNETS),
)

#: Input sizes with ImageNet weights of their own; at other sizes Keras loads the 224 px weights.
_MOBILENET_ROWS = {"MobileNet": (128, 160, 192, 224), "MobileNetV2": (96, 128, 160, 192, 224)}


def imagenet_file(name: str, size: tuple[int, int]) -> tuple[str, str]:
    """(file name, URL) of the ImageNet weights Keras loads for backbone ``name`` at input ``size`` = (h, w)."""
    backbone = BACKBONES[name]
    rows = size[0] if size[0] == size[1] and size[0] in _MOBILENET_ROWS.get(name, ()) else 224
    file = backbone.weights_file.format(rows=rows)
    return file, backbone.weights_url + file
