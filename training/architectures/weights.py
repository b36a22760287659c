"""Pretrained weights: keras.applications' ImageNet weights (or a weights file saved from a
keras.applications model) transferred into the zoo's own layers, and the preprocessing they expect.

    create_model("resnet50", weights="imagenet")                  # keras downloads its ResNet50 weights
    create_model("resnet50", weights="resnet50.weights.h5", num_classes=10)   # offline; a new head
    build_end_to_end("resnet50", num_classes=1000, image_size=224, weights="imagenet")  # + caffe scaling

How. The variant's keras twin (``model_info(name).keras_application``) is built at its reference
size with 1000 classes, and keras loads the weights into it: ``weights="imagenet"`` is keras' own
download (``keras.utils.get_file``, cached in ``~/.keras/models``), a path is read with
``twin.load_weights`` (a ``.weights.h5`` from ``twin.save_weights``, or keras' own downloaded
``.h5``) once ``check_weights_file`` has found in it exactly the twin's weight shapes (a wrong file
is refused before keras reads it, which would otherwise warn once per layer it cannot match).
Then ``weight_mapping`` pairs our weighted layers with the twin's, one to one in
graph order (both models' layers in Keras' deterministic topological order), and checks every pair:
compatible layer types, the same kernel sizes / strides / normalisation epsilons, and every weight's
shape (after the two layout conversions below). Any mismatch refuses with a message naming both
layers; nothing is loaded partially. The equality of outputs that this gives is tested for every
twin (``tests/test_pretrained.py``).

Layout conversions: keras' ConvNeXt writes the depthwise 7x7 as ``Conv2D(groups=C)`` with a kernel
``(7, 7, 1, C)``, ours a ``DepthwiseConv2D`` with ``(7, 7, C, 1)``; keras' MobileNet (V1, V3)
classifiers are 1x1 ``Conv2D`` layers where ours are ``Dense`` (kernel ``(1, 1, n, m)`` -> ``(n, m)``).

Structure: ResNet v2's twin (TF-slim's layout, which its ImageNet weights were trained with) puts a
stage's stride in its *last* block, with a 1x1 max-pool shortcut and symmetric padding, where ours
follows fb.resnet.torch (stride in the first block); with pretrained weights ours is built in keras'
layout (``TWIN_OPTIONS``). Every other family has the same layout as its twin.

Preprocessing (``TWIN_PREPROCESSING``): the scaling keras' ``preprocess_input`` of the family applies,
which the weights were trained with:

- ``caffe`` (VGG16/19, ResNet50/101/152): RGB -> BGR, minus the ImageNet mean in 0..255, no scaling;
- ``tf`` (InceptionV3, Xception, MobileNet, MobileNetV2, ResNet*V2): ``x / 127.5 - 1``;
- ``torch`` (DenseNet): ``x / 255``, minus the ImageNet mean, divided by its standard deviation;
- ``in_model`` (EfficientNet, ConvNeXt, MobileNetV3): ``preprocess_input`` is the identity and the
  twin scales inside the model (``include_preprocessing``): its leading ``Rescaling`` /
  ``Normalization`` layers are reproduced in ours with their values (EfficientNet's normalisation
  statistics come with the weights, and keras adds a ``1/sqrt(std)`` rescale for "imagenet": a
  weights file whose statistics are keras' ImageNet ones gets that rescale too, as it came from
  keras' ImageNet model).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.architectures._registry import build_model, list_models, model_info
from training.architectures.scaling import IMAGENET_MEAN, IMAGENET_STD, scaling_layers

# keras.applications module of each twin constructor (its preprocess_input).
KERAS_MODULE = {
    "VGG16": "vgg16",
    "VGG19": "vgg19",
    "ResNet50": "resnet",
    "ResNet101": "resnet",
    "ResNet152": "resnet",
    "ResNet50V2": "resnet_v2",
    "ResNet101V2": "resnet_v2",
    "ResNet152V2": "resnet_v2",
    "InceptionV3": "inception_v3",
    "Xception": "xception",
    "MobileNet": "mobilenet",
    "MobileNetV2": "mobilenet_v2",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "DenseNet121": "densenet",
    "DenseNet169": "densenet",
    "DenseNet201": "densenet",
    **{f"EfficientNetB{i}": "efficientnet" for i in range(8)},
    **{f"ConvNeXt{size}": "convnext" for size in ("Tiny", "Small", "Base", "Large")},
}

# The mode of each module's preprocess_input (keras.applications.imagenet_utils).
TWIN_PREPROCESSING = {
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "inception_v3": "tf",
    "xception": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "densenet": "torch",
    "efficientnet": "in_model",
    "convnext": "in_model",
    "mobilenet_v3": "in_model",
}

# Builder options that give our model the twin's layout (see the module docstring).
TWIN_OPTIONS = {
    "ResNet50V2": {"stride_at": "last"},
    "ResNet101V2": {"stride_at": "last"},
    "ResNet152V2": {"stride_at": "last"},
}

# keras' caffe mode subtracts these from BGR pixels (imagenet_utils._preprocess_numpy_input).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# keras' EfficientNet: with weights="imagenet" it adds Rescaling(1 / sqrt(std)) after its
# Normalization (whose stored statistics are IMAGENET_MEAN / IMAGENET_STD, from
# training.architectures.scaling), keras-team/keras efficientnet.py.

# Layer attributes that must agree between a pair (shapes alone would not see a stride).
CHECKED_ATTRIBUTES = ("kernel_size", "strides", "dilation_rate", "epsilon", "center", "scale", "use_bias")


class WeightsError(ValueError):
    """The weights cannot be transferred exactly (wrong file, truncated file, no twin, mismatch)."""


@dataclass(frozen=True)
class Pair:
    """One transfer: our layer <- the twin's layer, and how the weights convert."""

    ours: keras.layers.Layer
    twin: keras.layers.Layer
    convert: str = "same"  # "same" | "grouped_to_depthwise" | "conv1x1_to_dense"

    def weights(self) -> list[np.ndarray]:
        values = [keras.ops.convert_to_numpy(w) for w in self.twin.weights]
        if self.convert == "grouped_to_depthwise":  # (kh, kw, 1, C) -> (kh, kw, C, 1)
            values[0] = np.transpose(values[0], (0, 1, 3, 2))
        elif self.convert == "conv1x1_to_dense":  # (1, 1, n, m) -> (n, m)
            values[0] = values[0].reshape(values[0].shape[2:])
        return values


def twin_name(name: str) -> str:
    """The keras.applications constructor of zoo variant ``name``; ``WeightsError`` if none."""
    twin = model_info(name).keras_application
    if twin is None:
        with_twin = [n for n in list_models() if model_info(n).keras_application]
        raise WeightsError(
            f"{name} has no keras.applications twin, so no pretrained weights: train it from scratch, "
            f"or pick one of the {len(with_twin)} variants that have them: {', '.join(with_twin)}"
        )
    return twin


def twin_preprocessing(name: str) -> str:
    """``caffe``, ``tf``, ``torch`` or ``in_model``: what the twin's weights expect (docstring)."""
    return TWIN_PREPROCESSING[KERAS_MODULE[twin_name(name)]]


def twin_options(name: str) -> dict:
    """Builder options that give our ``name`` its twin's layout (empty for most variants)."""
    return dict(TWIN_OPTIONS.get(twin_name(name), {}))


def build_twin(name: str, weights: str | Path | None = None) -> keras.Model:
    """The keras.applications twin at its reference size, 1000 classes, with ``weights`` loaded.

    ``"imagenet"``: keras' download; a path: a weights file of that twin; ``None``: random.
    """
    info = model_info(name)
    constructor = getattr(keras.applications, twin_name(name))
    kwargs = {"include_top": True, "classes": 1000, "input_shape": info.input_shape}
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as error:  # no internet, a proxy, a broken cache...
            raise WeightsError(
                f"could not get keras' ImageNet weights for {info.keras_application} ({error}); "
                "offline, save them where the internet is reachable with "
                f"keras.applications.{info.keras_application}(weights='imagenet')"
                ".save_weights('x.weights.h5') and pass that file as weights"
            ) from error
    twin = constructor(weights=None, **kwargs)
    if weights is None:
        return twin
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found (weights: None, 'imagenet' or a file path)")
    wrong = f"{path} is not a complete weights file of keras.applications.{info.keras_application} " + (
        f"(saved with twin.save_weights('x.weights.h5') from that model at "
        f"{info.input_shape[0]}x{info.input_shape[1]}, 1000 classes)"
    )
    if path.suffix == ".h5":
        check_weights_file(path, twin, wrong)
    try:
        twin.load_weights(str(path))
    except Exception as error:
        raise WeightsError(f"{wrong}: {type(error).__name__}: {str(error).strip()[:600]}") from error
    return twin


def check_weights_file(path: Path, twin: keras.Model, wrong: str) -> None:
    """``WeightsError`` (``wrong``, then why) unless the HDF5 weights file ``path`` holds exactly
    ``twin``'s weight arrays, compared by shape, without loading them: a Keras 3 ``.weights.h5``, a
    legacy weights file (keras' downloads) or a legacy whole-model file (its ``model_weights``)."""
    import h5py

    shapes: list[tuple] = []

    def collect(_, item) -> None:
        if isinstance(item, h5py.Dataset):
            shapes.append(tuple(item.shape))

    try:
        with h5py.File(path, "r") as file:
            file.get("model_weights", file).visititems(collect)
    except (OSError, KeyError, ValueError) as error:  # not HDF5, truncated
        raise WeightsError(f"{wrong}: unreadable as HDF5 ({error})") from None
    found, expected = Counter(shapes), Counter(tuple(w.shape) for w in twin.weights)
    if found != expected:
        missing = sorted((expected - found).elements(), key=str)[:3]
        raise WeightsError(
            f"{wrong}: it holds {len(shapes)} weight arrays, the twin has {len(twin.weights)}"
            + (f"; none of shape {', '.join(map(str, missing))}" if missing else "")
        )


def _weighted(model: keras.Model, *, skip_preprocessing: bool) -> list[keras.layers.Layer]:
    """The layers with weights, in graph order; nested models (keras' ConvNeXt stem and
    downsampling layers are ``Sequential``) are expanded in place."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_weighted(layer, skip_preprocessing=skip_preprocessing))
            continue
        if not layer.weights:
            continue
        if skip_preprocessing and isinstance(layer, (layers.Normalization, layers.Rescaling)):
            continue
        out.append(layer)
    return out


def _conversion(ours: keras.layers.Layer, twin: keras.layers.Layer) -> str | None:
    """How ``twin``'s weights go into ``ours``, or None when the two layer types cannot pair."""
    o, t = type(ours).__name__, type(twin).__name__
    if o == t:
        return "same"
    if o == "DepthwiseConv2D" and t == "Conv2D" and getattr(twin, "groups", 1) > 1:
        return "grouped_to_depthwise"
    if o == "Dense" and t == "Conv2D" and tuple(twin.kernel_size) == (1, 1):
        return "conv1x1_to_dense"
    return None


def _describe(layer: keras.layers.Layer) -> str:
    shapes = ", ".join(str(tuple(w.shape)) for w in layer.weights)
    return f"{type(layer).__name__} {layer.name!r} [{shapes}]"


def weight_mapping(ours: keras.Model, twin: keras.Model, *, skip: set[str] = frozenset()) -> list[Pair]:
    """Our weighted layers paired with the twin's, every pair checked; ``WeightsError`` if not exact.

    ``skip``: our layer names whose pair is not transferred (a new classifier), shapes unchecked.
    """
    mine = _weighted(ours, skip_preprocessing=False)
    theirs = _weighted(twin, skip_preprocessing=True)
    if len(mine) != len(theirs):
        raise WeightsError(
            f"{ours.name} has {len(mine)} layers with weights, its twin {twin.name} {len(theirs)}: "
            "not the same network, the weights cannot be transferred exactly"
        )
    pairs = []
    for index, (o, t) in enumerate(zip(mine, theirs, strict=True)):
        where = f"layer pair {index}: ours {_describe(o)} vs twin {_describe(t)}"
        convert = _conversion(o, t)
        if convert is None:
            raise WeightsError(f"{where}: incompatible layer types")
        pair = Pair(o, t, convert)
        if o.name in skip:
            pairs.append(pair)
            continue
        if convert == "same":
            for attribute in CHECKED_ATTRIBUTES:
                a, b = getattr(o, attribute, None), getattr(t, attribute, None)
                if isinstance(a, list):
                    a = tuple(a)
                if isinstance(b, list):
                    b = tuple(b)
                if a != b:
                    raise WeightsError(f"{where}: {attribute} differs ({a} vs {b})")
        values = pair.weights()
        expected = [tuple(w.shape) for w in o.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise WeightsError(f"{where}: weight shapes differ ({expected} vs {got} after {convert})")
        pairs.append(pair)
    return pairs


def transfer(ours: keras.Model, twin: keras.Model, *, new_head: bool) -> list[Pair]:
    """Copy the twin's weights into ``ours`` (all checked first); ``new_head`` keeps our classifier."""
    skip = {"predictions"} if new_head else set()
    pairs = weight_mapping(ours, twin, skip=skip)
    for pair in pairs:
        if pair.ours.name not in skip:
            pair.ours.set_weights(pair.weights())
    return pairs


@keras.saving.register_keras_serializable(package="convzoo")
class ReverseChannels(layers.Layer):
    """RGB <-> BGR (caffe preprocessing: the weights of VGG / ResNet v1 expect BGR)."""

    def call(self, x):
        return keras.ops.flip(x, axis=-1)


def mode_layers(mode: str) -> list[keras.layers.Layer]:
    """Layers taking 0..255 RGB pixels to what keras' ``preprocess_input`` gives in ``mode``:
    ``caffe``, ``tf`` or ``torch`` (``in_model``: the model scales by itself, no layers)."""
    if mode == "caffe":
        return [
            ReverseChannels(name="bgr"),
            layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="caffe_mean"),
        ]
    if mode == "tf":
        return scaling_layers("tf")
    if mode == "torch":
        return scaling_layers("imagenet")
    if mode == "in_model":
        return []
    raise ValueError(f"unknown keras preprocess_input mode {mode!r}")


def preprocessing_layers(name: str, twin: keras.Model | None = None) -> list[keras.layers.Layer]:
    """Layers taking 0..255 RGB pixels to what the twin's weights expect (``twin_preprocessing``).

    ``in_model`` needs the loaded ``twin``: its leading Rescaling / Normalization layers are copied.
    """
    mode = twin_preprocessing(name)
    if mode != "in_model":
        return mode_layers(mode)
    if twin is None:
        raise ValueError(f"{name}'s preprocessing is inside its twin: pass the loaded twin")
    copied = []
    for layer in twin.layers[1:]:
        if isinstance(layer, layers.Rescaling):
            config = layer.get_config()
            copied.append(
                layers.Rescaling(config["scale"], offset=config["offset"], name=f"twin_rescale_{len(copied)}")
            )
        elif isinstance(layer, layers.Normalization):
            mean = keras.ops.convert_to_numpy(layer.mean).reshape(-1).astype("float64")
            variance = keras.ops.convert_to_numpy(layer.variance).reshape(-1).astype("float64")
            copied.append(
                layers.Normalization(
                    mean=mean.tolist(), variance=variance.tolist(), name=f"twin_normalize_{len(copied)}"
                )
            )
        else:
            break
    if KERAS_MODULE[twin_name(name)] == "efficientnet" and _needs_imagenet_rescale(copied):
        # A file saved from keras' ImageNet EfficientNet, loaded into a twin built without
        # weights="imagenet": keras would scale once more (see IMAGENET_STD); so do we.
        copied.append(
            layers.Rescaling(
                [1.0 / float(np.sqrt(s)) for s in IMAGENET_STD], name=f"twin_rescale_{len(copied)}"
            )
        )
    return copied


def _needs_imagenet_rescale(copied: list[keras.layers.Layer]) -> bool:
    """Whether the copied EfficientNet scaling has keras' ImageNet statistics but not the extra
    rescale keras adds to them (it has it when the twin was built with weights="imagenet")."""
    kinds = [type(layer).__name__ for layer in copied]
    if kinds != ["Rescaling", "Normalization"]:
        return False
    config = copied[1].get_config()
    mean, variance = np.asarray(config["mean"]).reshape(-1), np.asarray(config["variance"]).reshape(-1)
    return bool(
        np.allclose(mean, IMAGENET_MEAN, atol=1e-4)
        and np.allclose(variance, np.square(IMAGENET_STD), atol=1e-4)
    )


def load_pretrained(
    name: str,
    weights: str | Path,
    *,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] | None = None,
    **options,
) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """Our ``name`` with the twin's ``weights`` and the preprocessing layers they expect.

    ``num_classes != 1000``: every layer but the classifier is loaded; the classifier is new.
    Options the twin's layout needs (``twin_options``) are applied; conflicting ones are refused.
    EfficientNet-Lite has no twin: its weights are PyTorch state dicts (``torch_weights``).
    """
    from training.architectures import torch_weights

    if torch_weights.is_torch_family(name):
        return torch_weights.load_torch_pretrained(
            name, weights, num_classes=num_classes, input_shape=input_shape, **options
        )
    layout = twin_options(name)
    for key, value in layout.items():
        if key in options and options[key] != value:
            raise WeightsError(
                f"{name} with pretrained weights needs {key}={value!r} (the twin's layout), "
                f"got {options[key]!r}"
            )
    twin = build_twin(name, weights)
    model = build_model(name, num_classes, input_shape, **{**options, **layout})
    transfer(model, twin, new_head=num_classes != 1000)
    return model, preprocessing_layers(name, twin)
