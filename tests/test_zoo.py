"""The architecture zoo: every registered model builds and runs; parameter counts are faithful."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.architectures import create_model, list_models, model_info

# Variants whose reference-size build is heavy (large parameter counts or inputs): slow.
HEAVY = {
    "vgg16", "vgg19", "alexnet",
    "resnet152", "resnet152_v2", "resnet101", "resnet101_v2",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "convnext_base", "convnext_large",
    "densenet201",
}

ALL = list_models()


def _marks(name):
    return [pytest.mark.slow] if name in HEAVY else []


def test_registry_lists_the_ten_families():
    families = {model_info(n).family for n in ALL}
    assert families >= {
        "lenet", "alexnet", "vgg", "inception", "resnet",
        "xception", "densenet", "mobilenet", "efficientnet", "convnext",
    }
    assert list_models("resnet*") and all(n.startswith("resnet") for n in list_models("resnet*"))


def test_unknown_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown architecture"):
        create_model("resnet5000")


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in ALL])
def test_builds_and_runs_at_small_size(name):
    """Each model builds at its smallest supported size and gives finite probabilities."""
    info = model_info(name)
    size = max(info.min_size, 32)
    channels = info.input_shape[2]
    model = create_model(name, num_classes=7, input_shape=(size, size, channels))
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, channels)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, 7)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in ALL])
def test_too_small_input_is_refused(name):
    info = model_info(name)
    if info.min_size <= 1:
        pytest.skip("no minimum size")
    small = info.min_size - 1
    with pytest.raises(ValueError, match="at least"):
        create_model(name, num_classes=3, input_shape=(small, small, info.input_shape[2]))


WITH_KERAS_TWIN = [n for n in ALL if model_info(n).keras_application]


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in WITH_KERAS_TWIN])
def test_parameter_count_equals_keras_applications(name):
    """Faithfulness: same parameter count as keras.applications at the reference size."""
    info = model_info(name)
    ours = create_model(name, num_classes=1000)
    theirs = getattr(keras.applications, info.keras_application)(
        weights=None, classes=1000, input_shape=info.input_shape, include_top=True
    )
    # keras.applications bakes pixel scaling into some backbones (EfficientNet, ConvNeXt,
    # MobileNetV3); ours leaves it to the end-to-end model, so those layers' weights (a
    # Normalization's mean/variance/count) are not part of the comparison.
    preprocessing = sum(
        layer.count_params()
        for layer in theirs.layers
        if isinstance(layer, (keras.layers.Normalization, keras.layers.Rescaling))
    )
    assert ours.count_params() == theirs.count_params() - preprocessing
    keras.backend.clear_session()
