"""Inception: GoogLeNet (Inception v1) and Inception v3.

- Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (arXiv 2014; figure 2b, table 1).
  Modules of parallel 1x1, 1x1->3x3, 1x1->5x5 and 3x3-maxpool->1x1 branches, concatenated.
  As in the paper: convolutions with bias and ReLU (no batch normalization), local response
  normalization in the stem, global average pooling, dropout 0.4 before the classifier.
  Without the two auxiliary classifiers (training-time only). Parameter figure matched:
  table 1's "6.8M" total, which sums weights (no biases) in units of 1024 (inception 3a's
  163,328 weights are listed as "159K", the 1024x1000 linear layer as "1000K"): ours has
  6,990,272 weights = 6.83M such units, and 6,998,552 parameters with the biases.
- Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
  (arXiv 2015; figures 5-7 and 10, table 1). Factorised modules A (35x35), B (17x17, 1x7/7x1)
  and C (8x8, expanded 1x3/3x1 branches) with grid-size reductions between them, every
  convolution followed by batch normalization (no gamma) and ReLU. Layer for layer the
  TensorFlow implementation that ``keras.applications.InceptionV3`` also follows (e.g. module A
  keeps a 5x5 branch), without the auxiliary head: 23,851,784 parameters with 1000 classes.
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import (
    LocalResponseNormalization,
    classifier_head,
    conv_bn_act,
    model_input,
)

# ---------------------------------------------------------------- GoogLeNet (Inception v1)

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; a 3x3/2 max pool between stages.
GOOGLENET_STAGES = (
    {
        "3a": (64, 96, 128, 16, 32, 32),
        "3b": (128, 128, 192, 32, 96, 64),
    },
    {
        "4a": (192, 96, 208, 16, 48, 64),
        "4b": (160, 112, 224, 24, 64, 64),
        "4c": (128, 128, 256, 24, 64, 64),
        "4d": (112, 144, 288, 32, 64, 64),
        "4e": (256, 160, 320, 32, 128, 128),
    },
    {
        "5a": (256, 160, 320, 32, 128, 128),
        "5b": (384, 192, 384, 48, 128, 128),
    },
)


def conv_relu(x, filters: int, kernel_size: int, *, name: str, strides: int = 1):
    """GoogLeNet's convolution: bias and ReLU, no normalization."""
    return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", activation="relu", name=name)(
        x
    )


def inception_module(x, widths: tuple[int, ...], *, name: str):
    """Figure 2b: four parallel branches, concatenated along channels."""
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = widths
    branch1 = conv_relu(x, n1x1, 1, name=f"{name}_1x1")
    branch3 = conv_relu(x, n3x3_reduce, 1, name=f"{name}_3x3_reduce")
    branch3 = conv_relu(branch3, n3x3, 3, name=f"{name}_3x3")
    branch5 = conv_relu(x, n5x5_reduce, 1, name=f"{name}_5x5_reduce")
    branch5 = conv_relu(branch5, n5x5, 5, name=f"{name}_5x5")
    pool = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    pool = conv_relu(pool, pool_proj, 1, name=f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_output")([branch1, branch3, branch5, pool])


def max_pool(x, *, name: str):
    return layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)


@register_model(
    "inception_v1",
    family="inception",
    year=2014,
    paper="Going Deeper with Convolutions (Szegedy et al., 2014)",
    input_shape=(224, 224, 3),
    min_size=32,
    keras_application=None,
    preprocessing="imagenet",
    dropout=0.4,
)
def googlenet(num_classes, input_shape, name, *, dropout, classifier_activation="softmax"):
    """GoogLeNet (table 1): stem, inception 3a-5b with max pools between stages, avg pool, linear."""
    inputs = model_input(input_shape)
    x = conv_relu(inputs, 64, 7, strides=2, name="conv1_7x7")
    x = LocalResponseNormalization(name="pool1_norm")(max_pool(x, name="pool1"))
    x = conv_relu(x, 64, 1, name="conv2_3x3_reduce")
    x = conv_relu(x, 192, 3, name="conv2_3x3")
    x = max_pool(LocalResponseNormalization(name="conv2_norm")(x), name="pool2")
    for stage, modules in enumerate(GOOGLENET_STAGES):
        if stage:
            x = max_pool(x, name=f"pool{stage + 2}")
        for module, widths in modules.items():
            x = inception_module(x, widths, name=f"inception_{module}")
    outputs = classifier_head(x, num_classes, name=name, dropout=dropout, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------- Inception v3


def cbr(x, filters: int, kernel_size, *, name: str, strides: int = 1, padding: str = "same"):
    """Inception v3's convolution: no bias, batch normalization without gamma, ReLU."""
    return conv_bn_act(x, filters, kernel_size, strides=strides, padding=padding, bn_scale=False, name=name)


def avg_pool_branch(x, filters: int, *, name: str):
    x = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    return cbr(x, filters, 1, name=f"{name}_pool_proj")


def inception_a(x, pool_filters: int, *, name: str):
    """35x35 module (figure 5): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""
    branch1 = cbr(x, 64, 1, name=f"{name}_1x1")
    branch5 = cbr(x, 48, 1, name=f"{name}_5x5_reduce")
    branch5 = cbr(branch5, 64, 5, name=f"{name}_5x5")
    branch3 = cbr(x, 64, 1, name=f"{name}_3x3dbl_reduce")
    branch3 = cbr(branch3, 96, 3, name=f"{name}_3x3dbl_1")
    branch3 = cbr(branch3, 96, 3, name=f"{name}_3x3dbl_2")
    pool = avg_pool_branch(x, pool_filters, name=name)
    return layers.Concatenate(name=name)([branch1, branch5, branch3, pool])


def reduction_a(x, *, name: str):
    """35x35 -> 17x17 (figure 10): 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2."""
    branch3 = cbr(x, 384, 3, strides=2, padding="valid", name=f"{name}_3x3")
    branch3dbl = cbr(x, 64, 1, name=f"{name}_3x3dbl_reduce")
    branch3dbl = cbr(branch3dbl, 96, 3, name=f"{name}_3x3dbl_1")
    branch3dbl = cbr(branch3dbl, 96, 3, strides=2, padding="valid", name=f"{name}_3x3dbl_2")
    pool = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return layers.Concatenate(name=name)([branch3, branch3dbl, pool])


def inception_b(x, channels_7x7: int, *, name: str):
    """17x17 module (figure 6), n=7: 1x1 | 1x1->1x7->7x1 | 1x1->(7x1->1x7)x2 | avgpool->1x1."""
    c7 = channels_7x7
    branch1 = cbr(x, 192, 1, name=f"{name}_1x1")
    branch7 = cbr(x, c7, 1, name=f"{name}_7x7_reduce")
    branch7 = cbr(branch7, c7, (1, 7), name=f"{name}_7x7_1")
    branch7 = cbr(branch7, 192, (7, 1), name=f"{name}_7x7_2")
    branch7dbl = cbr(x, c7, 1, name=f"{name}_7x7dbl_reduce")
    branch7dbl = cbr(branch7dbl, c7, (7, 1), name=f"{name}_7x7dbl_1")
    branch7dbl = cbr(branch7dbl, c7, (1, 7), name=f"{name}_7x7dbl_2")
    branch7dbl = cbr(branch7dbl, c7, (7, 1), name=f"{name}_7x7dbl_3")
    branch7dbl = cbr(branch7dbl, 192, (1, 7), name=f"{name}_7x7dbl_4")
    pool = avg_pool_branch(x, 192, name=name)
    return layers.Concatenate(name=name)([branch1, branch7, branch7dbl, pool])


def reduction_b(x, *, name: str):
    """17x17 -> 8x8: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2."""
    branch3 = cbr(x, 192, 1, name=f"{name}_3x3_reduce")
    branch3 = cbr(branch3, 320, 3, strides=2, padding="valid", name=f"{name}_3x3")
    branch7 = cbr(x, 192, 1, name=f"{name}_7x7x3_reduce")
    branch7 = cbr(branch7, 192, (1, 7), name=f"{name}_7x7x3_1")
    branch7 = cbr(branch7, 192, (7, 1), name=f"{name}_7x7x3_2")
    branch7 = cbr(branch7, 192, 3, strides=2, padding="valid", name=f"{name}_7x7x3_3")
    pool = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return layers.Concatenate(name=name)([branch3, branch7, pool])


def expanded_3x3(x, filters: int, *, name: str):
    """Figure 7's split: parallel 1x3 and 3x1 convolutions, concatenated."""
    wide = cbr(x, filters, (1, 3), name=f"{name}_1x3")
    tall = cbr(x, filters, (3, 1), name=f"{name}_3x1")
    return layers.Concatenate(name=f"{name}_concat")([wide, tall])


def inception_c(x, *, name: str):
    """8x8 module (figure 7): 1x1 | 1x1->{1x3,3x1} | 1x1->3x3->{1x3,3x1} | avgpool->1x1."""
    branch1 = cbr(x, 320, 1, name=f"{name}_1x1")
    branch3 = cbr(x, 384, 1, name=f"{name}_3x3_reduce")
    branch3 = expanded_3x3(branch3, 384, name=f"{name}_3x3")
    branch3dbl = cbr(x, 448, 1, name=f"{name}_3x3dbl_reduce")
    branch3dbl = cbr(branch3dbl, 384, 3, name=f"{name}_3x3dbl_1")
    branch3dbl = expanded_3x3(branch3dbl, 384, name=f"{name}_3x3dbl_2")
    pool = avg_pool_branch(x, 192, name=name)
    return layers.Concatenate(name=name)([branch1, branch3, branch3dbl, pool])


# The body after the stem, in order: (block function, its options). Outputs are named mixed0..10.
INCEPTION_V3_BLOCKS = (
    (inception_a, {"pool_filters": 32}),
    (inception_a, {"pool_filters": 64}),
    (inception_a, {"pool_filters": 64}),
    (reduction_a, {}),
    (inception_b, {"channels_7x7": 128}),
    (inception_b, {"channels_7x7": 160}),
    (inception_b, {"channels_7x7": 160}),
    (inception_b, {"channels_7x7": 192}),
    (reduction_b, {}),
    (inception_c, {}),
    (inception_c, {}),
)


def inception_v3_stem(x):
    """299x299 -> 35x35 (table 1): three 3x3 convs, max pool, 1x1 and 3x3 convs, max pool."""
    x = cbr(x, 32, 3, strides=2, padding="valid", name="stem_conv1")
    x = cbr(x, 32, 3, padding="valid", name="stem_conv2")
    x = cbr(x, 64, 3, name="stem_conv3")
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool1")(x)
    x = cbr(x, 80, 1, padding="valid", name="stem_conv4")
    x = cbr(x, 192, 3, padding="valid", name="stem_conv5")
    return layers.MaxPooling2D(3, strides=2, name="stem_pool2")(x)


@register_model(
    "inception_v3",
    family="inception",
    year=2015,
    paper="Rethinking the Inception Architecture for Computer Vision (Szegedy et al., 2015)",
    input_shape=(299, 299, 3),
    min_size=75,
    keras_application="InceptionV3",
    preprocessing="tf",
    dropout=0.0,
)
def inception_v3(num_classes, input_shape, name, *, dropout, classifier_activation="softmax"):
    """Inception v3: stem, 3 x A, reduction, 4 x B, reduction, 2 x C, avg pool, classifier."""
    inputs = model_input(input_shape)
    x = inception_v3_stem(inputs)
    for index, (block, options) in enumerate(INCEPTION_V3_BLOCKS):
        x = block(x, name=f"mixed{index}", **options)
    outputs = classifier_head(x, num_classes, name=name, dropout=dropout, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)
