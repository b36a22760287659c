"""Pixel scaling layers: 0..255 RGB pixels to what a backbone expects.

Part of the zoo (each family's ``ModelInfo.preprocessing`` names one of ``PREPROCESSING``), Keras
only: ``training.end_to_end`` scales the end-to-end model's pixels with it, and
``training.architectures.weights`` builds what a keras.applications twin's weights expect from it.
"""

from __future__ import annotations

from keras import layers

# ImageNet statistics on 0..1 pixels (what "imagenet" preprocessing normalises with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite's normalisation (tensorflow/tpu efficientnet_lite_builder: MEAN_RGB, STDDEV_RGB).
LITE_MEAN, LITE_STD = 127.0, 128.0

PREPROCESSING = ("imagenet", "tf", "unit", "lite", None)


def scaling_layers(preprocessing: str | None) -> list[layers.Layer]:
    """Pixels 0..255 -> what the backbone expects: "imagenet", "tf" (-1..1), "unit" (0..1), "lite"
    ((x - 127) / 128, EfficientNet-Lite's) or None."""
    if preprocessing == "imagenet":
        return [
            layers.Rescaling(1 / 255, name="rescale"),
            layers.Normalization(
                mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalize"
            ),
        ]
    if preprocessing == "tf":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")]
    if preprocessing == "lite":
        return [layers.Rescaling(1 / LITE_STD, offset=-LITE_MEAN / LITE_STD, name="rescale")]
    if preprocessing == "unit":
        return [layers.Rescaling(1 / 255, name="rescale")]
    if preprocessing is None:
        return []
    raise ValueError(f"unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING}")
