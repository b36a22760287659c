"""ConvNeXt (Liu et al. 2022): "A ConvNet for the 2020s", CVPR 2022,
https://arxiv.org/abs/2201.03545.

A ResNet modernised step by step towards a Swin Transformer: a 4x4 stride-4 "patchify" stem,
stages of (3, 3, 9, 3) blocks for Tiny, separate LayerNorm + 2x2 stride-2 downsampling layers,
and the ConvNeXt block

    depthwise 7x7 -> LayerNorm -> Dense(4C) -> GELU -> Dense(C) -> layer scale -> drop path -> + x

(the 1x1 convolutions are written as Dense on the channel axis, as in the official code).

The depthwise 7x7 is a ``DepthwiseConv2D``, where keras.applications writes ``Conv2D(groups=C)``
(same weights, same parameter count): TensorFlow's CPU convolution kernels do not handle groups,
so Keras' TF backend compiles each grouped conv as a separate XLA function, and XLA's CPU grouped
convolution is slow. GELU (exact) and LayerNorm are Keras' built-ins: the alternatives tried were
no faster. The measurements behind both choices: benchmarks/README.md, "Training-side figures".
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, model_input

# Blocks per stage and channels per stage (the paper's Table / section 2.6).
# drop_path_rate: the stochastic-depth rate the paper trained each size with on ImageNet-1k.
CONFIGS = {
    "tiny": {"depths": (3, 3, 9, 3), "widths": (96, 192, 384, 768), "drop_path_rate": 0.1},
    "small": {"depths": (3, 3, 27, 3), "widths": (96, 192, 384, 768), "drop_path_rate": 0.4},
    "base": {"depths": (3, 3, 27, 3), "widths": (128, 256, 512, 1024), "drop_path_rate": 0.5},
    "large": {"depths": (3, 3, 27, 3), "widths": (192, 384, 768, 1536), "drop_path_rate": 0.5},
}

LN_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="convzoo")
class LayerScale(layers.Layer):
    """Multiplies each channel by a learned scale initialised to ``init_value`` (CaiT, 2021)."""

    def __init__(self, init_value: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


def layer_norm(x, *, name: str):
    return layers.LayerNormalization(epsilon=LN_EPSILON, name=name)(x)


def convnext_block(x, *, drop_path_rate: float, layer_scale_init: float, name: str):
    """Depthwise 7x7 -> LN -> 4x MLP (GELU) -> layer scale -> drop path, plus the identity."""
    channels = x.shape[-1]
    shortcut = x
    x = layers.DepthwiseConv2D(7, padding="same", name=f"{name}_depthwise_conv")(x)
    x = layer_norm(x, name=f"{name}_layernorm")
    x = layers.Dense(4 * channels, name=f"{name}_pointwise_conv_1")(x)
    x = layers.Activation("gelu", name=f"{name}_gelu")(x)
    x = layers.Dense(channels, name=f"{name}_pointwise_conv_2")(x)
    x = LayerScale(layer_scale_init, name=f"{name}_layer_scale")(x)
    if drop_path_rate:
        # Stochastic depth: drop the whole residual branch per sample (noise shared over H, W, C).
        x = layers.Dropout(drop_path_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def stem(x, width: int, *, name: str):
    """The "patchify" stem: non-overlapping 4x4 patches, then LayerNorm."""
    x = layers.Conv2D(width, 4, strides=4, name=f"{name}_stem_conv")(x)
    return layer_norm(x, name=f"{name}_stem_layernorm")


def downsample(x, width: int, *, name: str):
    """LayerNorm, then a 2x2 stride-2 convolution between stages."""
    x = layer_norm(x, name=f"{name}_layernorm")
    return layers.Conv2D(width, 2, strides=2, name=f"{name}_conv")(x)


_FAMILY = {
    "family": "convnext",
    "year": 2022,
    "paper": "Liu et al. 2022, A ConvNet for the 2020s",
    "input_shape": (224, 224, 3),
    "min_size": 32,  # stride-4 stem + three stride-2 downsamplings: 32 px -> a 1x1 map
    "preprocessing": "imagenet",
}


@register_model("convnext_tiny", keras_application="ConvNeXtTiny", **_FAMILY, **CONFIGS["tiny"])
@register_model("convnext_small", keras_application="ConvNeXtSmall", **_FAMILY, **CONFIGS["small"])
@register_model("convnext_base", keras_application="ConvNeXtBase", **_FAMILY, **CONFIGS["base"])
@register_model("convnext_large", keras_application="ConvNeXtLarge", **_FAMILY, **CONFIGS["large"])
def convnext(
    num_classes: int,
    input_shape: tuple[int, int, int],
    name: str,
    *,
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    drop_path_rate: float,
    layer_scale_init: float = 1e-6,
    dropout: float = 0.0,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """ConvNeXt of the given stage ``depths`` and ``widths``.

    ``drop_path_rate`` is the stochastic-depth rate of the last block; it grows linearly from 0
    over the blocks, as in the paper. ``dropout`` applies before the classifier (0 in the paper).
    """
    inputs = model_input(input_shape)
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    x = inputs
    block_index = 0
    for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        if stage == 0:
            x = stem(x, width, name=name)
        else:
            x = downsample(x, width, name=f"{name}_downsampling_{stage - 1}")
        for i in range(depth):
            x = convnext_block(
                x,
                drop_path_rate=rates[block_index],
                layer_scale_init=layer_scale_init,
                name=f"{name}_stage_{stage}_block_{i}",
            )
            block_index += 1
    x = layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    x = layer_norm(x, name=f"{name}_head_layernorm")
    outputs = classifier_head(
        x, num_classes, name=name, dropout=dropout, activation=classifier_activation, pool=False
    )
    return keras.Model(inputs, outputs, name=name)
