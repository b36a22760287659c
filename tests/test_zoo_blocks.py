"""Block-level checks of the DenseNet / MobileNet / EfficientNet / ConvNeXt modules.

(Parameter counts and small-size builds of every variant are in test_zoo.py.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from benchmarks import zoo_latency
from training.architectures import create_model
from training.architectures.convnext import LayerScale

SMALL = (32, 32, 3)


def _images(n=2, shape=SMALL):
    return np.random.default_rng(0).uniform(0, 1, (n, *shape)).astype("float32")


def test_convnext_round_trips_through_a_keras_checkpoint(tmp_path):
    """The custom LayerScale layer is registered, so a saved .keras file loads and agrees."""
    model = create_model("convnext_tiny", num_classes=5, input_shape=SMALL)
    path = tmp_path / "convnext.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert any(isinstance(layer, LayerScale) for layer in loaded.layers)
    x = _images()
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_convnext_uses_depthwise_not_grouped_convolutions():
    """The CPU-latency fix: every 7x7 is a DepthwiseConv2D; no Conv2D has groups > 1."""
    model = create_model("convnext_tiny", num_classes=5, input_shape=SMALL)
    depthwise = [layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == sum((3, 3, 9, 3))
    assert all(layer.kernel_size == (7, 7) for layer in depthwise)
    grouped = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert grouped == []


def test_convnext_stochastic_depth_grows_linearly_and_is_off_at_inference():
    model = create_model("convnext_tiny", num_classes=5, input_shape=SMALL, drop_path_rate=0.3)
    rates = [layer.rate for layer in model.layers if layer.name.endswith("_drop_path")]
    # The first block's rate is 0 (no layer); the others rise linearly to 0.3.
    assert len(rates) == 17
    assert rates[-1] == pytest.approx(0.3)
    assert np.all(np.diff(rates) > 0)
    x = _images()
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))


def test_logits_option_skips_the_softmax():
    for name in ("densenet121", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"):
        logits = create_model(name, num_classes=4, input_shape=SMALL, classifier_activation=None)
        out = keras.ops.convert_to_numpy(logits(_images(), training=False))
        assert not np.allclose(out.sum(axis=1), 1.0)
        keras.backend.clear_session()


def test_efficientnet_kernels_are_initialised_independently():
    """Each layer gets its own initialiser: same-shaped kernels start different."""
    model = create_model("efficientnet_b0", num_classes=5, input_shape=SMALL)
    first = model.get_layer("block5b_expand_conv").kernel.numpy()
    second = model.get_layer("block5c_expand_conv").kernel.numpy()
    assert first.shape == second.shape
    assert not np.allclose(first, second)


def test_mobilenet_width_multiplier_thins_every_layer():
    full = create_model("mobilenet_v2", num_classes=10, input_shape=SMALL)
    half = create_model("mobilenet_v2", num_classes=10, input_shape=SMALL, alpha=0.5)
    assert half.get_layer("block16_project_conv").filters == 160  # 320 x 0.5
    assert half.count_params() < 0.6 * full.count_params()


def test_latency_benchmark_reports_medians_and_the_ratio(capsys):
    zoo_latency.main(
        ["--models", "convnext_tiny,keras:ResNet50", "--size", "32", "--repeats", "2", "--warmup", "1"]
    )
    out = capsys.readouterr().out
    assert "| convnext_tiny | 28,589,128 |" in out
    assert "| keras:ResNet50 | 25,636,712 |" in out
    assert "convnext_tiny / keras:ResNet50:" in out
