"""Model registry: a decorator fills a dict; ``create_model`` and ``list_models`` look it up.

Modelled on timm's ``_registry.py``. Every builder registered here has the signature
``builder(num_classes, input_shape, **options) -> keras.Model`` and returns an uncompiled
backbone + classification head (no preprocessing: that lives in ``training.end_to_end``).
``build_model`` calls one with random weights; ``create_model`` (``_factory``, as in timm) adds
pretrained weights (``training.architectures.weights``) and the headless forms (``headless``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
from keras import layers


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture variant."""

    name: str
    builder: Callable[..., keras.Model]
    family: str
    year: int
    paper: str
    input_shape: tuple[int, int, int] = (224, 224, 3)
    """The reference input shape (the paper's / keras.applications')."""
    min_size: int = 32
    """Smallest height/width the design supports; smaller raises ``ValueError``."""
    keras_application: str | None = None
    """Name of the matching ``keras.applications`` constructor, if there is one."""
    preprocessing: str = "imagenet"
    """How the end-to-end model scales pixels for this family: see ``training.end_to_end``."""
    defaults: dict = field(default_factory=dict)
    """Keyword options passed to the builder unless the caller overrides them."""


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    family: str,
    year: int,
    paper: str,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    min_size: int = 32,
    keras_application: str | None = None,
    preprocessing: str = "imagenet",
    **defaults,
) -> Callable:
    """Register ``builder`` under ``name``; extra keyword arguments become builder defaults.

    One builder function can be registered under several names (one per variant):

        @register_model("resnet50", family="resnet", ..., depths=(3, 4, 6, 3))
        @register_model("resnet101", family="resnet", ..., depths=(3, 4, 23, 3))
        def resnet(num_classes, input_shape, *, depths, **options): ...
    """

    def decorator(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(
            name=name,
            builder=builder,
            family=family,
            year=year,
            paper=paper,
            input_shape=tuple(input_shape),
            min_size=min_size,
            keras_application=keras_application,
            preprocessing=preprocessing,
            defaults=dict(defaults),
        )
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"resnet*"``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; ``KeyError`` with close matches if unknown."""
    try:
        return _MODELS[name]
    except KeyError:
        close = [n for n in _MODELS if name.split("_")[0] in n][:8]
        hint = f" Did you mean one of: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown architecture {name!r}.{hint} `python -m training zoo` lists them all."
        ) from None


def build_model(
    name: str, num_classes: int = 1000, input_shape: tuple[int, int, int] | None = None, **options
) -> keras.Model:
    """``create_model`` with random weights and its head: the registered builder, checked."""
    info = model_info(name)
    shape = tuple(input_shape) if input_shape is not None else info.input_shape
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {shape}")
    if min(shape[0], shape[1]) < info.min_size:
        raise ValueError(
            f"{name} needs images of at least {info.min_size}x{info.min_size} pixels "
            f"(its downsampling stages would shrink smaller maps to nothing); got {shape[0]}x{shape[1]}"
        )
    kwargs = {**info.defaults, **options}
    return info.builder(num_classes=num_classes, input_shape=shape, name=name, **kwargs)


def headless(model: keras.Model, pooling: str | None = None) -> keras.Model:
    """The backbone of a zoo model without its head: the feature map its head pools or flattens.

    Every builder starts its head with a layer named ``{name}_avg_pool`` or ``flatten``.
    """
    names = {layer.name for layer in model.layers}
    start = next((n for n in (f"{model.name}_avg_pool", "flatten") if n in names), None)
    if start is None:
        raise ValueError(f"{model.name}: no head found (a {model.name}_avg_pool or flatten layer)")
    features = model.get_layer(start).input
    x = features
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    if pooling and f"{model.name}_head_layernorm" in names:
        x = model.get_layer(f"{model.name}_head_layernorm")(x)
    return keras.Model(model.input, x, name=f"{model.name}_features")
