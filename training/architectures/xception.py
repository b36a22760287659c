"""Xception: Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017
(arXiv 2016; figure 5).

    entry flow:  two 3x3 convs, then 3 blocks of [ReLU-SepConv-BN] x 2 + 3x3/2 max pool,
                 each with a strided 1x1 conv + BN shortcut (128, 256, 728 filters)
    middle flow: 8 blocks of [ReLU-SepConv 728-BN] x 3 with identity shortcuts
    exit flow:   one more reduction block (728 -> 1024), SepConv 1536 and 2048 with ReLU,
                 global average pooling, dropout 0.5 (the paper's ImageNet setting), classifier

Same layers as ``keras.applications.Xception``: 22,910,480 parameters with 1000 classes at
299x299. Like keras, inputs below 71x71 are refused.
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, conv_bn_act, model_input

ENTRY_FILTERS = (128, 256, 728)
MIDDLE_BLOCKS = 8
MIDDLE_FILTERS = 728
EXIT_FILTERS = (728, 1024)
TOP_FILTERS = (1536, 2048)


def sep_conv_bn(x, filters: int, *, name: str, relu_first: bool = True):
    """[ReLU ->] 3x3 depthwise-separable convolution (no bias) -> BN."""
    if relu_first:
        x = layers.Activation("relu", name=f"{name}_act")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def reduction_block(x, filters: tuple[int, int], *, name: str, relu_first: bool = True):
    """Two separable convs and a 3x3/2 max pool, added to a strided 1x1 conv + BN shortcut.

    The very first block of the entry flow starts without a ReLU (its input just had one).
    """
    shortcut = layers.Conv2D(
        filters[1], 1, strides=2, padding="same", use_bias=False, name=f"{name}_shortcut"
    )(x)
    shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    x = sep_conv_bn(x, filters[0], name=f"{name}_sepconv1", relu_first=relu_first)
    x = sep_conv_bn(x, filters[1], name=f"{name}_sepconv2")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def middle_block(x, *, name: str):
    """Three ReLU-SepConv-BN with an identity shortcut."""
    shortcut = x
    for index in (1, 2, 3):
        x = sep_conv_bn(x, MIDDLE_FILTERS, name=f"{name}_sepconv{index}")
    return layers.Add(name=f"{name}_add")([x, shortcut])


@register_model(
    "xception",
    family="xception",
    year=2017,
    paper="Xception: Deep Learning with Depthwise Separable Convolutions (Chollet, 2017)",
    input_shape=(299, 299, 3),
    min_size=71,
    keras_application="Xception",
    preprocessing="tf",
    dropout=0.5,
)
def xception(num_classes, input_shape, name, *, dropout, classifier_activation="softmax"):
    """Xception: entry flow, 8 middle-flow blocks, exit flow, classifier (figure 5)."""
    inputs = model_input(input_shape)
    x = conv_bn_act(inputs, 32, 3, strides=2, padding="valid", name="block1_conv1")
    x = conv_bn_act(x, 64, 3, padding="valid", name="block1_conv2")
    for index, filters in enumerate(ENTRY_FILTERS):
        x = reduction_block(x, (filters, filters), name=f"block{index + 2}", relu_first=index > 0)
    for index in range(MIDDLE_BLOCKS):
        x = middle_block(x, name=f"block{index + 5}")
    x = reduction_block(x, EXIT_FILTERS, name="block13")
    for index, filters in enumerate(TOP_FILTERS, start=1):
        x = sep_conv_bn(x, filters, name=f"block14_sepconv{index}", relu_first=False)
        x = layers.Activation("relu", name=f"block14_sepconv{index}_act")(x)
    outputs = classifier_head(x, num_classes, name=name, dropout=dropout, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)
