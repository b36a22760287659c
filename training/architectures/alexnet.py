"""AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks", NeurIPS 2012 (section 3, figure 2).

    conv1 96@11x11/4 -> LRN -> maxpool 3/2 -> conv2 256@5x5 -> LRN -> maxpool 3/2
    -> conv3 384@3x3 -> conv4 384@3x3 -> conv5 256@3x3 -> maxpool 3/2
    -> fc6 4096 -> dropout -> fc7 4096 -> dropout -> fc8

The paper's network on one device, as Caffe's ``bvlc_alexnet`` implements it: the two-GPU split
is kept as grouped convolutions (``groups=2``) in conv2, conv4 and conv5, the layers whose inputs
came only from the same GPU. ReLU everywhere, local response normalization after conv1 and conv2
(k=2, n=5, alpha=1e-4, beta=0.75), overlapping max pooling, dropout 0.5 in fc6/fc7.
Input 227x227 (the paper's "224" does not divide into its 55x55 conv1 maps).

Parameter figure matched: the paper's "60 million parameters"; this model has 60,965,224 at
227x227 with 1000 classes. ``groups=1`` merges the towers (the single-tower variant,
62,378,344 parameters).

The fully connected fc6 reads the flattened conv5 maps, so its size depends on the input size;
67x67 is the smallest input whose stride-4 stem and three pools still leave a 1x1 map.
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import LocalResponseNormalization, classifier_head, model_input

# The five convolutional layers. "split": the layer's input came from its own GPU's tower only,
# kept as a grouped convolution; "lrn" / "pool": followed by response normalization / max pooling.
ALEXNET_CONVS = (
    {"filters": 96, "kernel": 11, "stride": 4, "padding": "valid", "split": False, "lrn": True, "pool": True},
    {"filters": 256, "kernel": 5, "stride": 1, "padding": "same", "split": True, "lrn": True, "pool": True},
    {
        "filters": 384,
        "kernel": 3,
        "stride": 1,
        "padding": "same",
        "split": False,
        "lrn": False,
        "pool": False,
    },
    {"filters": 384, "kernel": 3, "stride": 1, "padding": "same", "split": True, "lrn": False, "pool": False},
    {"filters": 256, "kernel": 3, "stride": 1, "padding": "same", "split": True, "lrn": False, "pool": True},
)


def conv_layer(x, spec: dict, *, groups: int, name: str):
    """One convolutional layer of the paper: conv + ReLU, then LRN and/or overlapping max pool."""
    x = layers.Conv2D(
        spec["filters"],
        spec["kernel"],
        strides=spec["stride"],
        padding=spec["padding"],
        groups=groups if spec["split"] else 1,
        activation="relu",
        name=f"{name}_conv",
    )(x)
    if spec["lrn"]:
        x = LocalResponseNormalization(name=f"{name}_lrn")(x)
    if spec["pool"]:
        x = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return x


@register_model(
    "alexnet",
    family="alexnet",
    year=2012,
    paper="ImageNet Classification with Deep Convolutional Neural Networks (Krizhevsky et al., 2012)",
    input_shape=(227, 227, 3),
    min_size=67,
    keras_application=None,
    preprocessing="imagenet",
    dropout=0.5,
    groups=2,
)
def alexnet(num_classes, input_shape, name, *, dropout, groups, classifier_activation="softmax"):
    """AlexNet: five conv layers (table ``ALEXNET_CONVS``), two dropout-regularised FC layers."""
    inputs = model_input(input_shape)
    x = inputs
    for index, spec in enumerate(ALEXNET_CONVS, start=1):
        x = conv_layer(x, spec, groups=groups, name=f"conv{index}")
    x = layers.Flatten(name="flatten")(x)
    for fc in ("fc6", "fc7"):
        x = layers.Dense(4096, activation="relu", name=fc)(x)
        x = layers.Dropout(dropout, name=f"{fc}_dropout")(x)
    outputs = classifier_head(x, num_classes, name=name, activation=classifier_activation, pool=False)
    return keras.Model(inputs, outputs, name=name)
