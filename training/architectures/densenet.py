"""DenseNet (Huang et al. 2017): "Densely Connected Convolutional Networks", CVPR 2017,
https://arxiv.org/abs/1608.06993.

Inside a dense block every layer receives the concatenation of all earlier feature maps and adds
``growth_rate`` new channels of its own (DenseNet-BC: a 1x1 "bottleneck" to 4k channels before
each 3x3). Between blocks a transition layer (BN-ReLU-1x1 conv, 2x2 average pool) halves both
the spatial size and, with ``compression=0.5``, the channel count. The ImageNet models use
k = 32 and a 7x7 stride-2 stem with max pooling, like ResNet.
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, conv_bn_act, model_input

# Dense layers per block (the paper's Table 1).
BLOCKS = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}

BN_EPSILON = 1.001e-5


def bn_relu(x, *, name: str):
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def dense_layer(x, growth_rate: int, *, name: str):
    """BN-ReLU-Conv1x1(4k) -> BN-ReLU-Conv3x3(k), concatenated onto the input."""
    y = bn_relu(x, name=f"{name}_0")
    y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = bn_relu(y, name=f"{name}_1")
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def dense_block(x, num_layers: int, growth_rate: int, *, name: str):
    for i in range(num_layers):
        x = dense_layer(x, growth_rate, name=f"{name}_block{i + 1}")
    return x


def transition(x, compression: float, *, name: str):
    """BN-ReLU-Conv1x1 to ``compression`` x the channels, then 2x2 average pooling."""
    x = bn_relu(x, name=name)
    x = layers.Conv2D(int(x.shape[-1] * compression), 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


_FAMILY = {
    "family": "densenet",
    "year": 2017,
    "paper": "Huang et al. 2017, Densely Connected Convolutional Networks",
    "input_shape": (224, 224, 3),
    "min_size": 32,  # overall stride 32: a 32 px input ends as a 1x1 map
    "preprocessing": "imagenet",
}


@register_model("densenet121", keras_application="DenseNet121", blocks=BLOCKS[121], **_FAMILY)
@register_model("densenet169", keras_application="DenseNet169", blocks=BLOCKS[169], **_FAMILY)
@register_model("densenet201", keras_application="DenseNet201", blocks=BLOCKS[201], **_FAMILY)
def densenet(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    blocks: tuple[int, ...],
    growth_rate: int = 32,
    compression: float = 0.5,
    dropout: float = 0.0,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """DenseNet-BC with ``blocks`` dense layers per block and growth rate ``growth_rate``.

    ``dropout`` applies before the classifier (the paper uses none on ImageNet).
    """
    inputs = model_input(input_shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = conv_bn_act(x, 2 * growth_rate, 7, strides=2, padding="valid", bn_epsilon=BN_EPSILON, name="conv1")
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for i, num_layers in enumerate(blocks):
        x = dense_block(x, num_layers, growth_rate, name=f"conv{i + 2}")
        if i < len(blocks) - 1:
            x = transition(x, compression, name=f"pool{i + 2}")
    x = bn_relu(x, name="final")
    outputs = classifier_head(x, num_classes, name=name, dropout=dropout, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)
