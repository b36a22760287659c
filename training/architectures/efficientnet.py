"""EfficientNet (Tan & Le 2019): "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019, https://arxiv.org/abs/1905.11946.

The baseline B0 was found by architecture search: a stack of MBConv blocks (the MobileNetV2
inverted residual with squeeze-and-excite and swish), with stochastic depth on the skips. B1-B7
scale it with one compound coefficient: width (channels) x w, depth (block repeats) x d and the
input resolution together, plus a larger dropout before the classifier.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import model_input

# B0's seven MBConv stages (the paper's Table 1): expansion ("MBConv6"), kernel, first stride,
# output channels, repeats. The stem (3x3 conv, 32) precedes them; a 1x1 conv to 1280 follows.
BLOCK_ARGS = (
    {"expand": 1, "kernel": 3, "strides": 1, "filters": 16, "repeats": 1},
    {"expand": 6, "kernel": 3, "strides": 2, "filters": 24, "repeats": 2},
    {"expand": 6, "kernel": 5, "strides": 2, "filters": 40, "repeats": 2},
    {"expand": 6, "kernel": 3, "strides": 2, "filters": 80, "repeats": 3},
    {"expand": 6, "kernel": 5, "strides": 1, "filters": 112, "repeats": 3},
    {"expand": 6, "kernel": 5, "strides": 2, "filters": 192, "repeats": 4},
    {"expand": 6, "kernel": 3, "strides": 1, "filters": 320, "repeats": 1},
)
SE_RATIO = 0.25  # squeeze to a quarter of the block's *input* channels
STEM_FILTERS = 32
TOP_FILTERS = 1280

# Compound scaling: (width coefficient, depth coefficient, resolution, dropout) per variant.
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

# The reference implementation's initialisers (He-style fan-out for convolutions). Kept as
# configs, not instances: each layer then gets its own unseeded initialiser (a shared instance
# would give every same-shaped kernel the same initial values).
CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale channels by ``width``, rounded to a multiple of 8 without losing more than 10%."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * filters else rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def conv_bn(x, filters: int, kernel_size: int, *, name: str, strides: int = 1, activation="swish"):
    """Conv2D (fan-out init) -> BatchNormalization -> activation (None: linear projection)."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_INIT,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def squeeze_excite(x, squeezed: int, *, name: str):
    """Pool -> 1x1 (swish) to ``squeezed`` channels -> 1x1 (sigmoid) -> rescale the input."""
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
    s = layers.Conv2D(
        squeezed, 1, activation="swish", kernel_initializer=CONV_INIT, name=f"{name}_se_reduce"
    )(s)
    s = layers.Conv2D(
        x.shape[-1], 1, activation="sigmoid", kernel_initializer=CONV_INIT, name=f"{name}_se_expand"
    )(s)
    return layers.Multiply(name=f"{name}_se_excite")([x, s])


def mbconv(
    x,
    *,
    filters_out: int,
    kernel: int,
    strides: int,
    expand: int,
    drop_path: float,
    name: str,
    activation: str = "swish",
    se_ratio: float = SE_RATIO,
):
    """MBConv: expand 1x1 -> depthwise -> squeeze-excite -> linear 1x1, plus a stochastic skip
    (``se_ratio=0``: no squeeze-excite, as EfficientNet-Lite)."""
    filters_in = x.shape[-1]
    shortcut = x
    if expand != 1:
        x = conv_bn(x, filters_in * expand, 1, name=f"{name}_expand", activation=activation)
    x = layers.DepthwiseConv2D(
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=CONV_INIT,
        name=f"{name}_dwconv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_dwconv_bn")(x)
    x = layers.Activation(activation, name=f"{name}_dwconv_{activation}")(x)
    if se_ratio:
        x = squeeze_excite(x, max(1, int(filters_in * se_ratio)), name=name)
    x = conv_bn(x, filters_out, 1, activation=None, name=f"{name}_project")
    if strides == 1 and filters_in == filters_out:
        if drop_path:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


_FAMILY = {
    "family": "efficientnet",
    "year": 2019,
    "paper": "Tan & Le 2019, EfficientNet: Rethinking Model Scaling for CNNs",
    "min_size": 32,  # overall stride 32: a 32 px input ends as a 1x1 map
    "preprocessing": "imagenet",
}


def _variant(key: str) -> dict:
    width, depth, resolution, dropout = VARIANTS[key]
    return {
        "keras_application": f"EfficientNet{key.upper()}",
        "input_shape": (resolution, resolution, 3),
        "width": width,
        "depth": depth,
        "dropout": dropout,
        **_FAMILY,
    }


@register_model("efficientnet_b0", **_variant("b0"))
@register_model("efficientnet_b1", **_variant("b1"))
@register_model("efficientnet_b2", **_variant("b2"))
@register_model("efficientnet_b3", **_variant("b3"))
@register_model("efficientnet_b4", **_variant("b4"))
@register_model("efficientnet_b5", **_variant("b5"))
@register_model("efficientnet_b6", **_variant("b6"))
@register_model("efficientnet_b7", **_variant("b7"))
def efficientnet(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    width: float,
    depth: float,
    dropout: float,
    drop_path_rate: float = 0.2,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """EfficientNet scaled by ``width`` and ``depth`` (B0: 1.0, 1.0).

    ``drop_path_rate`` is the stochastic-depth rate of the last block (the paper's "drop connect"
    0.2), growing linearly from 0 over the blocks; ``dropout`` applies before the classifier.
    """
    return build(
        num_classes,
        input_shape,
        name,
        stem_filters=round_filters(STEM_FILTERS, width),
        repeats=[round_repeats(args["repeats"], depth) for args in BLOCK_ARGS],
        width=width,
        top_filters=round_filters(TOP_FILTERS, width),
        dropout=dropout,
        drop_path_rate=drop_path_rate,
        classifier_activation=classifier_activation,
    )


def build(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    stem_filters: int,
    repeats: list[int],
    width: float,
    top_filters: int,
    dropout: float,
    drop_path_rate: float,
    classifier_activation: str | None,
    activation: str = "swish",
    se_ratio: float = SE_RATIO,
) -> keras.Model:
    """Stem, the seven stages of ``BLOCK_ARGS`` (``repeats[stage]`` blocks each, channels scaled by
    ``width``), the 1x1 top, pooling and the classifier: EfficientNet and EfficientNet-Lite alike."""
    inputs = model_input(input_shape)
    x = conv_bn(inputs, stem_filters, 3, strides=2, name="stem", activation=activation)
    total = sum(repeats)
    index = 0
    for stage, (args, count) in enumerate(zip(BLOCK_ARGS, repeats, strict=True), start=1):
        for i in range(count):
            x = mbconv(
                x,
                filters_out=round_filters(args["filters"], width),
                kernel=args["kernel"],
                strides=args["strides"] if i == 0 else 1,
                expand=args["expand"],
                drop_path=drop_path_rate * index / total,
                name=f"block{stage}{chr(ord('a') + i)}",
                activation=activation,
                se_ratio=se_ratio,
            )
            index += 1
    x = conv_bn(x, top_filters, 1, name="top", activation=activation)
    x = layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_head_dropout")(x)
    outputs = layers.Dense(
        num_classes,
        activation=classifier_activation,
        kernel_initializer=DENSE_INIT,
        name="predictions",
    )(x)
    return keras.Model(inputs, outputs, name=name)
