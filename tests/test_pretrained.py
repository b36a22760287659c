"""Pretrained weights: ours with a keras.applications twin's weights gives the twin's outputs.

Offline: every twin is built with random weights made sensitive (random BatchNorm / LayerNorm /
LayerScale values, BatchNorm statistics measured on the test images, so that activations neither
vanish nor explode), saved with ``twin.save_weights``, and loaded into ours from that file. The
end-to-end model, given raw uint8 pixels at the reference size, must give the probabilities of
``twin(preprocess_input(x))`` (keras' own preprocess_input of the family).
"""

from __future__ import annotations

import importlib
import os

import keras
import numpy as np
import pytest
from helpers import SHARED_DATA
from variants import HEAVY_AT_REFERENCE_SIZE, variant_params

from training.architectures import create_model, list_models, model_info
from training.architectures._registry import build_model
from training.architectures.weights import (
    KERAS_MODULE,
    TWIN_PREPROCESSING,
    WeightsError,
    build_twin,
    twin_preprocessing,
    weight_mapping,
)
from training.end_to_end import build_end_to_end, resize_images

TWINS = [n for n in list_models() if model_info(n).keras_application]
RTOL = 1e-3
# Where the equality test writes one line per twin (name, largest differences), when set.
REPORT_ENV = "CONVZOO_PRETRAINED_REPORT"


def test_twenty_nine_twins_and_each_has_a_preprocessing():
    assert len(TWINS) == 29
    assert {twin_preprocessing(n) for n in TWINS} == {"caffe", "tf", "torch", "in_model"}
    assert set(KERAS_MODULE.values()) == set(TWIN_PREPROCESSING)


def photos(size: int, count: int = 4) -> np.ndarray:
    """``count`` real photos (one per Imagenette class, when ../shared has them) or smooth
    generated images, resized to ``size`` like the model does; uint8 ``[count, size, size, 3]``."""
    images = []
    if SHARED_DATA.is_dir():
        from PIL import Image

        for folder in sorted(p for p in SHARED_DATA.iterdir() if p.is_dir())[:count]:
            first = sorted(folder.glob("*.JPEG"))[0]
            images.append(np.asarray(Image.open(first).convert("RGB")))
    rng = np.random.default_rng(0)
    while len(images) < count:
        y, x = np.mgrid[0:size, 0:size] / size
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(1, 6, 3)
        channels = [127.5 + 120 * np.sin(freq[c] * (x + y * (c + 1)) * np.pi + phase[c]) for c in range(3)]
        images.append(np.stack(channels, -1).astype(np.uint8))
    resized = [keras.ops.convert_to_numpy(resize_images(image, size)) for image in images]
    return np.clip(np.round(np.stack(resized)), 0, 255).astype(np.uint8)


def keras_preprocess(name: str, images: np.ndarray) -> np.ndarray:
    module = importlib.import_module(f"keras.applications.{KERAS_MODULE[model_info(name).keras_application]}")
    return module.preprocess_input(images.astype("float32").copy())


def sensitive_twin(name: str, images: np.ndarray, seed: int = 0) -> keras.Model:
    """The twin with random weights that make every layer matter, BatchNorm calibrated on ``images``."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)  # the twin's own initial weights too: a reproducible test
    twin = build_twin(name)
    has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in twin.layers)
    for layer in twin.layers:
        kind = type(layer).__name__
        if kind == "Normalization" and hasattr(layer, "adapt_mean"):  # EfficientNet's, from the weights
            layer.adapt_mean.assign(np.array([0.485, 0.456, 0.406]) + rng.normal(0, 0.02, 3))
            layer.adapt_variance.assign(np.array([0.229, 0.224, 0.225]) ** 2 * rng.uniform(0.8, 1.2, 3))
            layer.finalize_state()
        elif kind in ("BatchNormalization", "LayerNormalization"):
            if getattr(layer, "gamma", None) is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            if getattr(layer, "beta", None) is not None:
                layer.beta.assign(rng.normal(0, 0.2, layer.beta.shape))
        elif kind == "LayerScale":
            layer.gamma.assign(rng.uniform(0.2, 0.6, layer.gamma.shape))
        elif kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
            if not has_bn:  # VGG: He scaling, so that 16 ReLU layers keep the signal
                for weight in layer.weights:
                    if "kernel" in weight.path:
                        weight.assign(weight * np.sqrt(2.0))
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape))
    if has_bn:  # moving statistics = the statistics of these images (momentum 0, one pass)
        bns = [layer for layer in twin.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bns:
            layer.momentum = 0.0
        twin(keras_preprocess(name, images), training=True)
        for layer in bns:
            layer.momentum = 0.99
    # A classifier whose logits spread (std >= ~3 over the classes for every image): not uniform.
    classifier = [layer for layer in twin.layers if getattr(layer, "kernel", None) is not None][-1]
    probabilities = keras.ops.convert_to_numpy(twin(keras_preprocess(name, images), training=False))
    spread = np.log(np.maximum(probabilities, 1e-30)).std(axis=1).min()  # every image's answer
    classifier.kernel.assign(classifier.kernel * (3.0 / max(spread, 1e-3)))
    return twin


def probabilities_of(model, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False)).astype("float64")


@pytest.mark.parametrize("name", variant_params(TWINS, heavy=HEAVY_AT_REFERENCE_SIZE))
def test_same_probabilities_as_the_twin_from_a_weights_file(name, tmp_path):
    """Raw uint8 pixels into ours == twin(preprocess_input(x)), rtol 1e-3, same top-1."""
    size = model_info(name).input_shape[0]
    images = photos(size, 4 if size < 456 else 2)  # EfficientNet-B5+: 2 (memory at 456-600 px)
    twin = sensitive_twin(name, images)
    path = tmp_path / f"{name}.weights.h5"
    twin.save_weights(path)
    expected = probabilities_of(twin, keras_preprocess(name, images))
    # Not degenerate: far from uniform, and the images differ in their answers.
    assert expected.max(axis=1).min() > 5 / 1000, expected.max(axis=1)
    del twin
    keras.backend.clear_session()

    ours = build_end_to_end(name, num_classes=1000, image_size=size, weights=str(path))
    got = probabilities_of(ours, images)
    biggest = np.abs(got - expected).max()
    relative = (np.abs(got - expected) / np.maximum(expected, 1e-6)).max()
    if os.environ.get(REPORT_ENV):
        with open(os.environ[REPORT_ENV], "a") as report:
            print(
                f"{name} max_abs={biggest:.3g} max_rel={relative:.3g} "
                f"top1={expected.max(axis=1).round(3).tolist()}",
                file=report,
            )
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """A sensitive MobileNetV3Small twin and its weights file (the fast twin for the tests below)."""
    name = "mobilenet_v3_small"
    images = photos(224)
    twin = sensitive_twin(name, images)
    path = tmp_path_factory.mktemp("weights") / f"{name}.weights.h5"
    twin.save_weights(path)
    return twin, path, images


def test_a_new_head_for_ten_classes_loads_everything_else(mobilenet_file):
    twin, path, images = mobilenet_file
    ours = create_model("mobilenet_v3_small", num_classes=10, weights=str(path))
    assert ours.get_layer("predictions").kernel.shape == (1024, 10)
    pairs = weight_mapping(ours, twin, skip={"predictions"})
    assert len(pairs) == len([layer for layer in ours.layers if layer.weights])
    for pair in pairs:
        if pair.ours.name == "predictions":
            continue
        for mine, theirs in zip(pair.ours.weights, pair.weights(), strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), theirs)
    # The headless backbone is the twin's own features (the map before its pooling).
    x = keras_preprocess("mobilenet_v3_small", images)
    features = create_model("mobilenet_v3_small", num_classes=10, weights=str(path), include_top=False)
    pooled = create_model("mobilenet_v3_small", weights=str(path), include_top=False, pooling="avg")
    got = keras.ops.convert_to_numpy(pooled(x))
    assert got.shape == (len(images), 576)
    np.testing.assert_allclose(
        got, keras.ops.convert_to_numpy(features(x)).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )


def test_headless_resnet50_is_the_twins_include_top_false(tmp_path):
    images = photos(224, 2)
    twin = sensitive_twin("resnet50", images)
    path = tmp_path / "resnet50.weights.h5"
    twin.save_weights(path)
    x = keras_preprocess("resnet50", images)
    expected = keras.ops.convert_to_numpy(
        keras.Model(twin.inputs, twin.get_layer("conv5_block3_out").output)(x)
    )
    ours = create_model("resnet50", weights=str(path), include_top=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), expected, rtol=1e-4, atol=1e-4)
    pooled = create_model("resnet50", weights=str(path), include_top=False, pooling="max")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pooled(x)), expected.max(axis=(1, 2)), rtol=1e-4, atol=1e-4
    )
    keras.backend.clear_session()


@pytest.mark.parametrize("name", variant_params(list_models(), heavy=HEAVY_AT_REFERENCE_SIZE))
def test_every_variant_has_a_headless_backbone(name):
    info = model_info(name)
    size = max(info.min_size, 32)
    shape = (size, size, info.input_shape[2])
    full = build_model(name, num_classes=5, input_shape=shape)
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape)).astype("float32")
    features = create_model(name, input_shape=shape, include_top=False)
    out = keras.ops.convert_to_numpy(features(x))
    assert out.ndim in (2, 4) and np.all(np.isfinite(out))  # 4: a feature map (2: LeNet's flattened)
    for pooling in ("avg", "max"):
        pooled = create_model(name, input_shape=shape, include_top=False, pooling=pooling)
        assert keras.ops.convert_to_numpy(pooled(x)).shape == (2, out.shape[-1])
    assert full.count_params() > features.count_params()
    keras.backend.clear_session()


def test_a_truncated_weights_file_is_refused(mobilenet_file, tmp_path):
    _, path, _ = mobilenet_file
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        WeightsError, match="not a complete weights file of keras.applications.MobileNetV3Small"
    ):
        create_model("mobilenet_v3_small", weights=str(cut))


def test_another_models_weights_file_is_refused_before_keras_reads_it(mobilenet_file, monkeypatch):
    """The file's weight shapes are not the twin's: refused without ``load_weights`` (which would
    warn once for every layer it cannot match before failing)."""
    _, path, _ = mobilenet_file

    def never(*args, **kwargs):
        raise AssertionError("keras read a weights file of another model")

    monkeypatch.setattr(keras.Model, "load_weights", never)
    with pytest.raises(
        WeightsError,
        match=r"not a complete weights file of keras.applications.MobileNetV3Large .*: it holds 210 "
        r"weight arrays, the twin has \d+",
    ):
        create_model("mobilenet_v3_large", weights=str(path))


def test_missing_file_and_variants_without_twin_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_model("mobilenet_v3_small", weights=str(tmp_path / "nothing.weights.h5"))
    with pytest.raises(WeightsError, match="resnet18 has no keras.applications twin"):
        create_model("resnet18", weights="imagenet")


def test_a_different_layout_is_refused_by_the_mapping():
    """ResNet50V2 in our default layout (stride in the first block) is not the twin's network."""
    twin = build_twin("resnet50_v2")
    with pytest.raises(WeightsError, match="strides differs"):
        weight_mapping(build_model("resnet50_v2"), twin)
    keras.backend.clear_session()


def test_an_efficientnet_file_with_keras_imagenet_statistics_gets_keras_extra_rescale(tmp_path):
    """keras' EfficientNet(weights="imagenet") scales by 1/sqrt(std) after its Normalization; a
    file saved from it (statistics = ImageNet's) loads into a weights=None twin without that layer,
    so ours must add it: checked against the twin fed the equivalently pre-scaled pixels."""
    name = "efficientnet_b0"
    images = photos(224, 2)
    twin = sensitive_twin(name, images)
    norm = next(layer for layer in twin.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign(np.array([0.485, 0.456, 0.406]))
    norm.adapt_variance.assign(np.array([0.229, 0.224, 0.225]) ** 2)
    norm.finalize_state()
    path = tmp_path / "efficientnet_b0_imagenet_stats.weights.h5"
    twin.save_weights(path)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    # keras' imagenet graph: ((x/255 - mean)/std)/sqrt(std) == the twin's graph on these pixels:
    equivalent = 255 * (mean + (images / 255 - mean) / np.sqrt(std))
    expected = probabilities_of(twin, equivalent.astype("float32"))
    ours = build_end_to_end(name, num_classes=1000, image_size=224, weights=str(path))
    assert [layer.name for layer in ours.layers if layer.name.startswith("twin_")] == [
        "twin_rescale_0",
        "twin_normalize_1",
        "twin_rescale_2",
    ]
    np.testing.assert_allclose(probabilities_of(ours, images), expected, rtol=RTOL, atol=1e-6)
    keras.backend.clear_session()


def test_imagenet_weights_are_keras_own_download_or_a_clear_error():
    """weights="imagenet" is keras' own download (the twin's constructor). Offline (as in CI here)
    it must fail with a message that says how to use a weights file; online, ours must then give
    keras' own ImageNet model's probabilities."""
    name = "mobilenet_v3_small"
    images = photos(224, 2)
    try:
        ours = build_end_to_end(name, num_classes=1000, image_size=224, weights="imagenet")
    except WeightsError as error:
        assert "could not get keras' ImageNet weights for MobileNetV3Small" in str(error)
        assert "save_weights('x.weights.h5')" in str(error)
        return
    twin = keras.applications.MobileNetV3Small(weights="imagenet")
    expected = probabilities_of(twin, keras_preprocess(name, images))
    np.testing.assert_allclose(probabilities_of(ours, images), expected, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet50_v2"])
def test_models_keep_their_names(name):
    """The backbone is named after the variant (the end-to-end model and checkpoints find it so)."""
    assert create_model(name, input_shape=(32, 32, 3)).name == name
    assert (
        build_model(name, input_shape=(32, 32, 3), stride_at="last" if name.endswith("_v2") else "first").name
        == name
    )


def test_legacy_h5_files_like_keras_downloads_load_too(mobilenet_file, tmp_path):
    """keras' downloaded weights (``~/.keras/models/*.h5``) are legacy HDF5 weights files: one made
    in that layout (a legacy whole-model file's ``model_weights`` group) gives the same outputs."""
    import h5py

    twin, _, images = mobilenet_file
    twin.save(tmp_path / "full.h5")  # legacy HDF5, a whole model
    with h5py.File(tmp_path / "full.h5") as full, h5py.File(tmp_path / "weights.h5", "w") as weights:
        group = full["model_weights"]
        for key, value in group.attrs.items():
            weights.attrs[key] = value
        for key in group:
            group.copy(key, weights)
    expected = probabilities_of(twin, keras_preprocess("mobilenet_v3_small", images))
    for file in ("full.h5", "weights.h5"):
        ours = build_end_to_end(
            "mobilenet_v3_small", num_classes=1000, image_size=224, weights=str(tmp_path / file)
        )
        np.testing.assert_allclose(probabilities_of(ours, images), expected, rtol=RTOL, atol=1e-6)
