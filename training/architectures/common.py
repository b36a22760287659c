"""Small building blocks shared by several families (heads, conv-bn-act)."""

from __future__ import annotations

import keras
from keras import layers


def classifier_head(
    x,
    num_classes: int,
    *,
    name: str,
    dropout: float = 0.0,
    activation: str | None = "softmax",
    pool: bool = True,
):
    """Global average pooling -> optional dropout -> Dense(num_classes) named ``predictions``.

    ``activation=None`` returns logits (the end-to-end model adds its own softmax in float32).
    """
    if pool:
        x = layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_head_dropout")(x)
    return layers.Dense(num_classes, activation=activation, name="predictions")(x)


def conv_bn_act(
    x,
    filters: int,
    kernel_size: int | tuple[int, int],
    *,
    name: str,
    strides: int = 1,
    padding: str = "same",
    activation: str | None = "relu",
    use_bias: bool = False,
    bn_epsilon: float = 1e-3,
    bn_momentum: float = 0.99,
):
    """Conv2D -> BatchNormalization -> activation, layers named ``{name}_conv/_bn/_act``."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def model_input(input_shape, name: str = "image"):
    """The backbone's input layer (float pixels, already preprocessed)."""
    return keras.Input(shape=input_shape, name=name)
