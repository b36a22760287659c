"""Small building blocks shared by several families (heads, conv-bn-act, local response norm)."""

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
    bn_scale: bool = True,
):
    """Conv2D -> BatchNormalization -> activation, layers named ``{name}_conv/_bn/_act``.

    ``bn_scale=False`` drops BatchNormalization's gamma (Inception v3 does, as a ReLU follows).
    """
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(
        epsilon=bn_epsilon, momentum=bn_momentum, scale=bn_scale, name=f"{name}_bn"
    )(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def model_input(input_shape, name: str = "image"):
    """The backbone's input layer (float pixels, already preprocessed)."""
    return keras.Input(shape=input_shape, name=name)


@keras.saving.register_keras_serializable(package="convzoo")
class LocalResponseNormalization(layers.Layer):
    """Across-channel local response normalization (AlexNet, Krizhevsky et al. 2012, sec. 3.3).

    ``b_c = a_c / (k + alpha * sum(a_j ** 2 for j within size // 2 channels of c)) ** beta``,
    with the paper's constants as defaults. No weights. GoogLeNet uses it too.
    """

    def __init__(self, size: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LocalResponseNormalization size must be odd and positive, got {size}")
        self.size, self.k, self.alpha, self.beta = size, k, alpha, beta

    def call(self, x):
        channels = x.shape[-1]
        half = self.size // 2
        squared = keras.ops.pad(keras.ops.square(x), [[0, 0], [0, 0], [0, 0], [half, half]])
        window_sum = sum(squared[..., i : i + channels] for i in range(self.size))
        return x / keras.ops.power(self.k + self.alpha * window_sum, self.beta)

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "k": self.k,
            "alpha": self.alpha,
            "beta": self.beta,
        }
