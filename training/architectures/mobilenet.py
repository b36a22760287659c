"""MobileNets: three generations of efficient networks for phones.

- V1, Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", https://arxiv.org/abs/1704.04861 — a plain stack of depthwise separable
  convolutions (depthwise 3x3 -> BN-ReLU6 -> pointwise 1x1 -> BN-ReLU6).
- V2, Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
  https://arxiv.org/abs/1801.04381 — the inverted residual: expand 1x1 (ReLU6) -> depthwise 3x3
  (ReLU6) -> linear 1x1 projection, with a skip between the thin ends.
- V3, Howard et al. 2019, "Searching for MobileNetV3", ICCV 2019, https://arxiv.org/abs/1905.02244
  — the V2 block found by architecture search, with squeeze-and-excite (hard-sigmoid gate),
  hard-swish activations and a slimmer last stage / head.

``alpha`` is the width multiplier of every variant: channel counts are scaled by it and rounded to
a multiple of 8 (``make_divisible``, as in the reference TensorFlow code).
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, conv_bn_act, model_input

# ---------------------------------------------------------------------------------------------
# Tables (the papers' architecture tables)
# ---------------------------------------------------------------------------------------------

# V1 (Table 1): (pointwise filters, depthwise stride) of the 13 depthwise separable layers.
V1_LAYERS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)

# V2 (Table 2): (expansion t, output channels c, repeats n, first stride s).
V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# V3 (Tables 1 and 2): (kernel, expansion ratio, output channels, squeeze-excite, activation,
# stride). The paper lists expanded sizes ("exp size"); the ratio times the block's input
# channels gives them (e.g. 16 x 4 = 64), which is how the reference code scales them with alpha.
V3_LARGE = (
    (3, 1, 16, False, "relu", 1),
    (3, 4, 24, False, "relu", 2),
    (3, 3, 24, False, "relu", 1),
    (5, 3, 40, True, "relu", 2),
    (5, 3, 40, True, "relu", 1),
    (5, 3, 40, True, "relu", 1),
    (3, 6, 80, False, "hard_swish", 2),
    (3, 2.5, 80, False, "hard_swish", 1),
    (3, 2.3, 80, False, "hard_swish", 1),
    (3, 2.3, 80, False, "hard_swish", 1),
    (3, 6, 112, True, "hard_swish", 1),
    (3, 6, 112, True, "hard_swish", 1),
    (5, 6, 160, True, "hard_swish", 2),
    (5, 6, 160, True, "hard_swish", 1),
    (5, 6, 160, True, "hard_swish", 1),
)
V3_SMALL = (
    (3, 1, 16, True, "relu", 2),
    (3, 72 / 16, 24, False, "relu", 2),
    (3, 88 / 24, 24, False, "relu", 1),
    (5, 4, 40, True, "hard_swish", 2),
    (5, 6, 40, True, "hard_swish", 1),
    (5, 6, 40, True, "hard_swish", 1),
    (5, 3, 48, True, "hard_swish", 1),
    (5, 3, 48, True, "hard_swish", 1),
    (5, 6, 96, True, "hard_swish", 2),
    (5, 6, 96, True, "hard_swish", 1),
    (5, 6, 96, True, "hard_swish", 1),
)
# Width of the last 1x1 convolution's hidden layer before the classifier (V3 "NBN" conv).
V3_HEAD_WIDTH = {"large": 1280, "small": 1024}
V3_BLOCKS = {"large": V3_LARGE, "small": V3_SMALL}

BN = {"bn_epsilon": 1e-3, "bn_momentum": 0.999}  # the reference TensorFlow settings for V2 / V3


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going down by more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def depthwise_bn_act(
    x,
    kernel_size: int,
    *,
    name: str,
    strides: int = 1,
    activation: str = "relu6",
    bn_epsilon: float = 1e-3,
    bn_momentum: float = 0.99,
):
    """DepthwiseConv2D -> BatchNormalization -> activation, named like ``conv_bn_act``."""
    x = layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def depthwise_separable(x, filters: int, strides: int, *, name: str):
    """MobileNet V1 layer: depthwise 3x3 -> BN-ReLU6 -> pointwise 1x1 -> BN-ReLU6."""
    x = depthwise_bn_act(x, 3, strides=strides, name=f"{name}_dw")
    return conv_bn_act(x, filters, 1, activation="relu6", name=f"{name}_pw")


def squeeze_excite(x, channels: int, *, name: str):
    """V3 squeeze-and-excite: pool -> 1x1 (ReLU) to channels/4 -> 1x1 (hard sigmoid) -> rescale."""
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    squeezed = make_divisible(channels / 4)
    s = layers.Conv2D(squeezed, 1, activation="relu", name=f"{name}_se_reduce")(s)
    s = layers.Conv2D(channels, 1, activation="hard_sigmoid", name=f"{name}_se_expand")(s)
    return layers.Multiply(name=f"{name}_se_excite")([x, s])


def inverted_residual(
    x,
    *,
    expanded: int,
    filters: int,
    strides: int,
    name: str,
    kernel_size: int = 3,
    activation: str = "relu6",
    se: bool = False,
):
    """Expand 1x1 -> depthwise -> (squeeze-excite) -> linear 1x1 projection, + skip if shapes match.

    The expansion is skipped when ``expanded`` equals the input width (t = 1).
    """
    shortcut = x
    if expanded != x.shape[-1]:
        x = conv_bn_act(x, expanded, 1, activation=activation, **BN, name=f"{name}_expand")
    x = depthwise_bn_act(x, kernel_size, strides=strides, activation=activation, **BN, name=f"{name}_dw")
    if se:
        x = squeeze_excite(x, expanded, name=name)
    x = conv_bn_act(x, filters, 1, activation=None, **BN, name=f"{name}_project")
    if strides == 1 and shortcut.shape[-1] == filters:
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


# ---------------------------------------------------------------------------------------------
# Builders and variants
# ---------------------------------------------------------------------------------------------

_FAMILY = {"family": "mobilenet", "input_shape": (224, 224, 3), "min_size": 32}
# min_size: the overall stride is 32, so a 32 px input ends as a 1x1 map.


@register_model(
    "mobilenet_v1",
    year=2017,
    paper="Howard et al. 2017, MobileNets: Efficient CNNs for Mobile Vision Applications",
    keras_application="MobileNet",
    preprocessing="tf",
    **_FAMILY,
)
def mobilenet_v1(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    alpha: float = 1.0,
    dropout: float = 1e-3,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """MobileNet V1 with width multiplier ``alpha`` (dropout 1e-3: the reference TF-slim value)."""
    inputs = model_input(input_shape)
    x = conv_bn_act(inputs, int(32 * alpha), 3, strides=2, activation="relu6", name="conv1")
    for i, (filters, strides) in enumerate(V1_LAYERS, start=1):
        x = depthwise_separable(x, int(filters * alpha), strides, name=f"block{i}")
    outputs = classifier_head(x, num_classes, name=name, dropout=dropout, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)


@register_model(
    "mobilenet_v2",
    year=2018,
    paper="Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    keras_application="MobileNetV2",
    preprocessing="tf",
    **_FAMILY,
)
def mobilenet_v2(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    alpha: float = 1.0,
    dropout: float = 0.2,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """MobileNet V2 with width multiplier ``alpha`` (the last 1x1 conv keeps 1280 unless alpha > 1).

    ``dropout`` before the classifier: 0.2, as in the reference TF-slim training setup.
    """
    inputs = model_input(input_shape)
    stem = make_divisible(32 * alpha)
    x = conv_bn_act(inputs, stem, 3, strides=2, activation="relu6", **BN, name="conv1")
    block = 0
    for expansion, channels, repeats, first_stride in V2_STAGES:
        for i in range(repeats):
            x = inverted_residual(
                x,
                expanded=expansion * x.shape[-1],
                filters=make_divisible(channels * alpha),
                strides=first_stride if i == 0 else 1,
                name=f"block{block}",
            )
            block += 1
    last = make_divisible(1280 * alpha) if alpha > 1 else 1280
    x = conv_bn_act(x, last, 1, activation="relu6", **BN, name="conv_last")
    outputs = classifier_head(x, num_classes, name=name, dropout=dropout, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)


_V3 = {
    "year": 2019,
    "paper": "Howard et al. 2019, Searching for MobileNetV3",
    "preprocessing": "tf",
    **_FAMILY,
}


@register_model("mobilenet_v3_small", keras_application="MobileNetV3Small", size="small", **_V3)
@register_model("mobilenet_v3_large", keras_application="MobileNetV3Large", size="large", **_V3)
def mobilenet_v3(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    size: str,
    alpha: float = 1.0,
    dropout: float = 0.2,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """MobileNet V3 ``size`` ("large" or "small") with width multiplier ``alpha``.

    The efficient last stage: 1x1 conv to 6x the channels, pool, then a 1x1 conv without BN
    (a Dense here) and hard-swish, dropout (0.2 in the paper) and the classifier.
    """
    inputs = model_input(input_shape)
    x = conv_bn_act(inputs, 16, 3, strides=2, activation="hard_swish", **BN, name="conv1")
    for i, (kernel, expansion, channels, se, activation, strides) in enumerate(V3_BLOCKS[size]):
        x = inverted_residual(
            x,
            expanded=make_divisible(x.shape[-1] * expansion),
            filters=make_divisible(channels * alpha),
            strides=strides,
            kernel_size=kernel,
            activation=activation,
            se=se,
            name=f"block{i}",
        )
    last = make_divisible(x.shape[-1] * 6)
    x = conv_bn_act(x, last, 1, activation="hard_swish", **BN, name="conv_last")
    x = layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    head = make_divisible(V3_HEAD_WIDTH[size] * alpha) if alpha > 1 else V3_HEAD_WIDTH[size]
    x = layers.Dense(head, activation="hard_swish", name="head_dense")(x)
    outputs = classifier_head(
        x, num_classes, name=name, dropout=dropout, activation=classifier_activation, pool=False
    )
    return keras.Model(inputs, outputs, name=name)
