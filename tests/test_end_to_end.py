"""The end-to-end model: raw uint8 images of any size in, float32 probabilities out."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.end_to_end import (
    AUGMENTATION_PRESETS,
    augmentation_preset,
    build_end_to_end,
    resize_images,
)

NUM_CLASSES = 3
SIZE = 32


def tiny_backbone(size: int = SIZE) -> keras.Model:
    """A prebuilt backbone returning logits (stands for any model not in the registry)."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="tiny")


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return build_end_to_end(
        "mobilenet_v3_small",
        num_classes=NUM_CLASSES,
        image_size=SIZE,
        augmentation=augmentation_preset("medium"),
        seed=1,
    )


def random_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("height,width", [(32, 32), (45, 70), (200, 120), (17, 23)])
def test_uint8_images_of_any_size_give_probabilities(model, height, width):
    probs = model(random_images(2, height, width), training=False)
    assert probs.shape == (2, NUM_CLASSES)
    assert probs.dtype == tf.float32
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-5)


def test_model_layout(model):
    assert model.inputs[0].dtype == "float32"
    assert model.layers[1].name == "resize"
    assert model.layers[-1].name == "probabilities"
    assert model.output.dtype == "float32"
    names = [layer.name for layer in model.layers]
    assert names.index("flip") < names.index("rand_augment") < names.index("rescale")


def test_augmentation_only_when_training(model):
    images = random_images(4, 48, 48, seed=3)
    first = model(images, training=False)
    second = model(images, training=False)
    np.testing.assert_array_equal(first, second)
    augmented = model(images, training=True)
    assert np.abs(np.asarray(augmented) - np.asarray(first)).max() > 1e-4


def test_resize_images_matches_the_model_layer(model):
    images = random_images(2, 75, 50, seed=4)
    inside = model.get_layer("resize")(tf.cast(images, tf.float32))
    outside = resize_images(images, SIZE)
    np.testing.assert_array_equal(inside, outside)
    assert outside.dtype == tf.float32 and outside.shape == (2, SIZE, SIZE, 3)
    # One image at a time (the data pipeline) gives the same pixels as the batch.
    np.testing.assert_array_equal(resize_images(images[1], SIZE), outside[1])


def test_resize_to_the_same_size_is_identity():
    images = random_images(1, SIZE, SIZE, seed=5)
    np.testing.assert_array_equal(resize_images(images, SIZE), images.astype("float32"))


def test_prebuilt_backbone_needs_explicit_preprocessing():
    with pytest.raises(ValueError, match="preprocessing"):
        build_end_to_end(tiny_backbone(), num_classes=NUM_CLASSES, image_size=SIZE)
    model = build_end_to_end(tiny_backbone(), num_classes=NUM_CLASSES, image_size=SIZE, preprocessing="tf")
    assert model.name == "tiny_end_to_end"
    assert model.get_layer("rescale").offset == -1.0
    probs = model(random_images(3, 64, 40), training=False)
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-5)


def test_presets_and_unknown_preset():
    assert not AUGMENTATION_PRESETS["none"].in_model
    assert AUGMENTATION_PRESETS["light"].flip and not AUGMENTATION_PRESETS["light"].rand_augment
    assert AUGMENTATION_PRESETS["strong"].mixes_batches
    assert augmentation_preset("light").replace(mixup=0.4).mixup == 0.4
    with pytest.raises(ValueError, match="light"):
        augmentation_preset("extreme")


def test_save_and_reload_gives_the_same_predictions(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = random_images(2, 40, 60, seed=6)
    np.testing.assert_allclose(reloaded(images, training=False), model(images, training=False), atol=1e-6)


def test_mixed_precision_keeps_float32_probabilities():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_end_to_end(
            tiny_backbone(), num_classes=NUM_CLASSES, image_size=SIZE, preprocessing="unit"
        )
        probs = model(random_images(2, 50, 50), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("tiny").layers[1].compute_dtype == "float16"
    assert probs.dtype == tf.float32
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-3)
