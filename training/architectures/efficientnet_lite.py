"""EfficientNet-Lite (Google 2020): EfficientNet for mobile accelerators and integer quantization.

Source: the TensorFlow TPU repository, ``models/official/efficientnet/lite/efficientnet_lite_builder.py``
(https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite, "EfficientNet-Lite",
blog post of March 2020), which builds on ``efficientnet_model.py`` of the same folder with these
global parameters for lite0..lite4:

- no squeeze-and-excitation (``se_ratio=None``: poorly supported by mobile accelerators);
- ReLU6 instead of swish everywhere (``relu_fn=tf.nn.relu6``: a bounded range quantizes well);
- ``fix_head_stem=True``: the stem (3x3 conv, 32 channels) and the head (1x1 conv, 1280) are not
  scaled by the width coefficient, and the first and last stages keep their single block whatever
  the depth coefficient (``efficientnet_model.py``: ``if fix_head_stem and (i == 0 or i == last)``);
- the inputs are normalised with mean 127 and standard deviation 128 (``MEAN_RGB = [127.0] * 3``,
  ``STDDEV_RGB = [128.0] * 3`` in the builder): ``preprocessing="lite"`` (measured by
  ``python -m training imagenet``: on real photos the ImageNet weights score 77.8 % top-1 with it,
  70.3 % with ImageNet mean/std normalisation; README, "Start from ImageNet").

Everything else is EfficientNet-B0's stack (``training.architectures.efficientnet``: same MBConv
stages, expansion, kernels, strides, channel rounding, BatchNorm epsilon 1e-3, stochastic depth
growing to 0.2 over the blocks). The variants' (width, depth, resolution, dropout) are the builder's
``efficientnet_lite_params``. ImageNet weights: ``training.architectures.torch_weights``.
"""

from __future__ import annotations

import keras

from training.architectures._registry import register_model
from training.architectures.efficientnet import (
    BLOCK_ARGS,
    STEM_FILTERS,
    TOP_FILTERS,
    build,
    round_repeats,
)

# efficientnet_lite_builder.efficientnet_lite_params: width, depth, resolution, dropout.
VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
ACTIVATION = "relu6"


def stage_repeats(stage: int, depth: float) -> int:
    """Blocks in ``stage`` (0-based): the first and last stages are not scaled (fix_head_stem)."""
    repeats = BLOCK_ARGS[stage]["repeats"]
    return repeats if stage in (0, len(BLOCK_ARGS) - 1) else round_repeats(repeats, depth)


_FAMILY = {
    "family": "efficientnet_lite",
    "year": 2020,
    "paper": "Google 2020, EfficientNet-Lite (tensorflow/tpu efficientnet/lite builder)",
    "min_size": 32,
    "preprocessing": "lite",
}


def _variant(key: str) -> dict:
    width, depth, resolution, dropout = VARIANTS[key]
    return {
        "input_shape": (resolution, resolution, 3),
        "width": width,
        "depth": depth,
        "dropout": dropout,
        **_FAMILY,
    }


@register_model("efficientnet_lite0", **_variant("lite0"))
@register_model("efficientnet_lite1", **_variant("lite1"))
@register_model("efficientnet_lite2", **_variant("lite2"))
@register_model("efficientnet_lite3", **_variant("lite3"))
@register_model("efficientnet_lite4", **_variant("lite4"))
def efficientnet_lite(
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
    """EfficientNet-Lite scaled by ``width`` and ``depth`` (Lite0: 1.0, 1.0); stem and head fixed."""
    return build(
        num_classes,
        input_shape,
        name,
        stem_filters=STEM_FILTERS,
        repeats=[stage_repeats(stage, depth) for stage in range(len(BLOCK_ARGS))],
        width=width,
        top_filters=TOP_FILTERS,
        dropout=dropout,
        drop_path_rate=drop_path_rate,
        classifier_activation=classifier_activation,
        activation=ACTIVATION,
        se_ratio=0,
    )
