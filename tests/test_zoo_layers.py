"""The zoo's own layers (local response normalization, LeNet's connection table) and options."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.architectures import create_model
from training.architectures.common import LocalResponseNormalization
from training.architectures.lenet import C3_CONNECTIONS, ConnectionTableConv2D

RNG = np.random.default_rng(0)


def test_local_response_normalization_matches_tensorflow():
    x = RNG.uniform(0, 20, (2, 4, 4, 16)).astype("float32")
    ours = keras.ops.convert_to_numpy(LocalResponseNormalization(size=5, k=2.0, alpha=1e-4, beta=0.75)(x))
    theirs = tf.nn.local_response_normalization(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)


def test_local_response_normalization_needs_an_odd_window():
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNormalization(size=4)


def test_connection_table_conv_equals_a_masked_full_convolution():
    layer = ConnectionTableConv2D(C3_CONNECTIONS, 5)
    x = RNG.normal(size=(2, 14, 14, 6)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    assert y.shape == (2, 10, 10, 16)
    assert layer.count_params() == 1_516  # table I of the paper

    full = np.zeros((5, 5, 6, 16), dtype="float32")
    for out, (inputs, kernel) in enumerate(zip(C3_CONNECTIONS, layer.kernels, strict=True)):
        full[:, :, list(inputs), out] = keras.ops.convert_to_numpy(kernel)[..., 0]
    expected = keras.ops.convert_to_numpy(
        keras.ops.conv(x, full, padding="valid")
    ) + keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_connection_table_refuses_missing_input_maps():
    with pytest.raises(ValueError, match="beyond the 4 inputs"):
        ConnectionTableConv2D(C3_CONNECTIONS, 5)(np.zeros((1, 14, 14, 4), dtype="float32"))


@pytest.mark.parametrize("name, size", [("lenet5", 32), ("alexnet", 67), ("inception_v1", 32)])
def test_custom_layers_survive_a_keras_save_and_load(name, size, tmp_path):
    channels = 1 if name == "lenet5" else 3
    model = create_model(name, num_classes=4, input_shape=(size, size, channels))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = RNG.uniform(-1, 1, (2, size, size, channels)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "xception"])
def test_classifier_activation_none_gives_logits(name):
    shape = (71, 71, 3) if name == "xception" else (32, 32, 1 if name == "lenet5" else 3)
    model = create_model(name, num_classes=5, input_shape=shape, classifier_activation=None)
    x = RNG.uniform(-1, 1, (3, *shape)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (3, 5)
    assert model.get_layer("predictions").activation is keras.activations.linear
    assert not np.allclose(logits.sum(axis=1), 1.0)


def test_resnet_width_multiplier_scales_every_stage():
    half = create_model("resnet18", num_classes=10, input_shape=(32, 32, 3), width=0.5)
    assert half.get_layer("conv1_conv").filters == 32
    assert half.get_layer("conv5_block2_2_conv").filters == 256
    full = create_model("resnet18", num_classes=10, input_shape=(32, 32, 3))
    assert half.count_params() < full.count_params() / 3
    with pytest.raises(ValueError, match="width must be positive"):
        create_model("resnet18", width=0)
