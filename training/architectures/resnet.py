"""ResNet: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv 2015; table 1), and the pre-activation ResNet v2 of "Identity Mappings in Deep Residual
Networks", ECCV 2016 (figure 4e).

    stem: 7x7/2 conv, 3x3/2 max pool
    4 stages of residual blocks (64, 128, 256, 512 filters; the first block of stages 3-5 has
    stride 2 and a 1x1 projection shortcut, "option B")
    global average pool -> classifier

Blocks: ``basic`` (two 3x3, ResNet-18/34), ``bottleneck`` (1x1 reduce, 3x3, 1x1 expand x4,
ResNet-50/101/152); v1 adds then applies ReLU, v2 (``preact=True``) applies BN-ReLU *before*
each convolution, leaves the sum un-activated (a clean identity path) and ends with BN-ReLU.

Bias and epsilon follow ``keras.applications`` so that the twins have identical parameter
counts: v1 convolutions all carry a bias (redundant before BN, but keras has them), v2
convolutions carry one only where no BN directly follows (the stem, the block's last 1x1 and the
projection); BN epsilon 1.001e-5. The stride sits in the block's first convolution (v1,
as in the paper) or in its 3x3 (v2, as in the authors' fb.resnet.torch code).

Parameter figures matched for the variants without a keras twin (1000 classes, 224x224):
ResNet-18 has 11,703,912 parameters (paper: 11.7M) and ResNet-34 21,823,208 (paper: 21.8M);
these include BatchNormalization's moving mean/variance (9,600 / 17,024 values), which Keras
counts, and the v1 conv biases.
``width`` scales every stage's filters (e.g. ``width=0.5`` halves them).
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, model_input

BN_EPSILON = 1.001e-5
STAGE_FILTERS = (64, 128, 256, 512)

# Blocks per stage (conv2_x .. conv5_x), table 1 of the paper.
RESNET_VARIANTS = {
    "resnet18": {"block": "basic", "depths": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "depths": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "depths": (3, 4, 6, 3)},
    "resnet101": {"block": "bottleneck", "depths": (3, 4, 23, 3)},
    "resnet152": {"block": "bottleneck", "depths": (3, 8, 36, 3)},
    "resnet50_v2": {"block": "bottleneck", "depths": (3, 4, 6, 3), "preact": True},
    "resnet101_v2": {"block": "bottleneck", "depths": (3, 4, 23, 3), "preact": True},
    "resnet152_v2": {"block": "bottleneck", "depths": (3, 8, 36, 3), "preact": True},
}
KERAS_TWINS = {
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "resnet50_v2": "ResNet50V2",
    "resnet101_v2": "ResNet101V2",
    "resnet152_v2": "ResNet152V2",
}
EXPANSION = {"basic": 1, "bottleneck": 4}


def bn(x, *, name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)


def conv(x, filters: int, kernel_size: int, *, name: str, strides: int = 1, use_bias: bool = True):
    return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=use_bias, name=name)(
        x
    )


def projection(x, filters: int, stride: int, *, name: str, use_bn: bool = True):
    """Shortcut when the shape changes: 1x1 convolution with the block's stride (option B)."""
    x = conv(x, filters, 1, strides=stride, name=f"{name}_0_conv")
    return bn(x, name=f"{name}_0_bn") if use_bn else x


def needs_projection(x, filters: int, stride: int) -> bool:
    return stride != 1 or x.shape[-1] != filters


def basic_block(x, filters: int, stride: int, *, name: str):
    """v1 basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU."""
    shortcut = projection(x, filters, stride, name=name) if needs_projection(x, filters, stride) else x
    x = conv(x, filters, 3, strides=stride, name=f"{name}_1_conv")
    x = layers.Activation("relu", name=f"{name}_1_relu")(bn(x, name=f"{name}_1_bn"))
    x = bn(conv(x, filters, 3, name=f"{name}_2_conv"), name=f"{name}_2_bn")
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def bottleneck_block(x, filters: int, stride: int, *, name: str):
    """v1 bottleneck: 1x1 reduce, 3x3, 1x1 expand (each conv-BN, ReLU between), add, ReLU."""
    out_filters = 4 * filters
    shortcut = x
    if needs_projection(x, out_filters, stride):
        shortcut = projection(x, out_filters, stride, name=name)
    x = conv(x, filters, 1, strides=stride, name=f"{name}_1_conv")
    x = layers.Activation("relu", name=f"{name}_1_relu")(bn(x, name=f"{name}_1_bn"))
    x = conv(x, filters, 3, name=f"{name}_2_conv")
    x = layers.Activation("relu", name=f"{name}_2_relu")(bn(x, name=f"{name}_2_bn"))
    x = bn(conv(x, out_filters, 1, name=f"{name}_3_conv"), name=f"{name}_3_bn")
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def preact_basic_block(x, filters: int, stride: int, *, name: str):
    """v2 basic block: BN-ReLU-3x3, BN-ReLU-3x3, add the (identity or projected) shortcut."""
    preact = layers.Activation("relu", name=f"{name}_preact_relu")(bn(x, name=f"{name}_preact_bn"))
    shortcut = x
    if needs_projection(x, filters, stride):
        shortcut = projection(preact, filters, stride, name=name, use_bn=False)
    x = conv(preact, filters, 3, strides=stride, use_bias=False, name=f"{name}_1_conv")
    x = layers.Activation("relu", name=f"{name}_1_relu")(bn(x, name=f"{name}_1_bn"))
    x = conv(x, filters, 3, name=f"{name}_2_conv")
    return layers.Add(name=f"{name}_out")([shortcut, x])


def preact_bottleneck_block(x, filters: int, stride: int, *, name: str, slim: bool = False):
    """v2 bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 x4, add the shortcut.

    ``slim``: TF-slim's (keras.applications') form: a projection only where the width changes,
    a 1x1 max pool (stride ``stride``) as the shortcut of a strided block, and the 3x3 padded
    symmetrically (1 on every side) rather than "same" (which pads 0 before, 1 after at stride 2).
    """
    out_filters = 4 * filters
    preact = layers.Activation("relu", name=f"{name}_preact_relu")(bn(x, name=f"{name}_preact_bn"))
    shortcut = x
    if slim:
        if x.shape[-1] != out_filters:
            shortcut = projection(preact, out_filters, stride, name=name, use_bn=False)
        elif stride > 1:
            shortcut = layers.MaxPooling2D(1, strides=stride, name=f"{name}_shortcut_pool")(x)
    elif needs_projection(x, out_filters, stride):
        shortcut = projection(preact, out_filters, stride, name=name, use_bn=False)
    x = conv(preact, filters, 1, use_bias=False, name=f"{name}_1_conv")
    x = layers.Activation("relu", name=f"{name}_1_relu")(bn(x, name=f"{name}_1_bn"))
    if slim:
        x = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(x)
        x = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(x)
    else:
        x = conv(x, filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")
    x = layers.Activation("relu", name=f"{name}_2_relu")(bn(x, name=f"{name}_2_bn"))
    x = conv(x, out_filters, 1, name=f"{name}_3_conv")
    return layers.Add(name=f"{name}_out")([shortcut, x])


BLOCKS = {
    ("basic", False): basic_block,
    ("bottleneck", False): bottleneck_block,
    ("basic", True): preact_basic_block,
    ("bottleneck", True): preact_bottleneck_block,
}


def stem(x, filters: int, *, preact: bool):
    """7x7/2 convolution (padding 3) and 3x3/2 max pool (padding 1); v2 defers BN-ReLU."""
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(filters, 7, strides=2, name="conv1_conv")(x)
    if not preact:
        x = layers.Activation("relu", name="conv1_relu")(bn(x, name="conv1_bn"))
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def resnet(
    num_classes,
    input_shape,
    name,
    *,
    block: str,
    depths: tuple[int, ...],
    preact: bool = False,
    width: float = 1.0,
    stride_at: str = "first",
    classifier_activation="softmax",
):
    """ResNet with ``depths[i]`` blocks of type ``block`` in stage ``conv{i + 2}``.

    ``stride_at="last"`` (v2 bottlenecks only): TF-slim's layout, which keras.applications'
    ResNet*V2 and their ImageNet weights use: stages conv2-conv4 end with a strided block
    (``preact_bottleneck_block(slim=True)``) instead of conv3-conv5 starting with one. Same
    parameters, same output size, a different network: ``training.architectures.weights`` builds it so.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if stride_at not in ("first", "last"):
        raise ValueError(f"stride_at must be 'first' or 'last', got {stride_at!r}")
    if stride_at == "last" and (block, preact) != ("bottleneck", True):
        raise ValueError("stride_at='last' (TF-slim's layout) exists for ResNet v2 bottlenecks only")
    block_fn = BLOCKS[block, preact]
    inputs = model_input(input_shape)
    x = stem(inputs, int(64 * width), preact=preact)
    last_stage = len(depths) - 1
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, depths, strict=True)):
        for index in range(blocks):
            block_name = f"conv{stage + 2}_block{index + 1}"
            if stride_at == "last":
                stride = 2 if stage < last_stage and index == blocks - 1 else 1
                x = block_fn(x, int(filters * width), stride, name=block_name, slim=True)
                continue
            stride = 2 if stage > 0 and index == 0 else 1
            x = block_fn(x, int(filters * width), stride, name=block_name)
    if preact:
        x = layers.Activation("relu", name="post_relu")(bn(x, name="post_bn"))
    outputs = classifier_head(x, num_classes, name=name, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)


for _name, _variant in RESNET_VARIANTS.items():
    _v2 = _variant.get("preact", False)
    register_model(
        _name,
        family="resnet",
        year=2016 if _v2 else 2015,
        paper=(
            "Identity Mappings in Deep Residual Networks (He et al., 2016)"
            if _v2
            else "Deep Residual Learning for Image Recognition (He et al., 2015)"
        ),
        input_shape=(224, 224, 3),
        min_size=32,
        keras_application=KERAS_TWINS.get(_name),
        preprocessing="tf" if _v2 else "imagenet",
        **_variant,
    )(resnet)
