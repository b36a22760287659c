"""TF Hub models inside Keras 3 models, exported as published or fine-tuned (offline).

The hub models here are small TF2 SavedModels written into tmp_path: ``hub.load`` takes a local
folder through the same code path as a downloaded handle.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from service.repository import read_metadata
from training.__main__ import main as cli
from training.architectures.scaling import IMAGENET_MEAN, IMAGENET_STD
from training.end_to_end import resize_images
from training.hub import HubModel, build_hub_model, imagenet1k_labels
from training.portable import portable_path

HUB_SIZE = 224  # the published ConvNeXt's fixed input size
CLASSES = 5
FEATURES = 8


class Classifier(tf.Module):
    """Stands for a published classifier: float images [batch, 224, 224, 3] -> logits."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal((6, classes), seed=(1, 2)))
        self.bias = tf.Variable(tf.linspace(-0.5, 0.5, classes))

    @tf.function(input_signature=[tf.TensorSpec([None, HUB_SIZE, HUB_SIZE, 3], tf.float32)])
    def __call__(self, images):
        pooled = tf.concat([tf.reduce_mean(images, [1, 2]), tf.reduce_max(images, [1, 2])], axis=-1)
        return pooled @ self.kernel + self.bias


class FeatureVector(tf.Module):
    """Stands for a feature-vector model: float images of any size -> features [batch, 8]."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal((6, FEATURES), seed=(3, 4)))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        pooled = tf.concat([tf.reduce_mean(images, [1, 2]), tf.reduce_max(images, [1, 2])], axis=-1)
        return tf.tanh(pooled @ self.kernel)


def save_module(module: tf.Module, path: Path) -> str:
    tf.saved_model.save(module, str(path))
    return str(path)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> str:
    return save_module(Classifier(), tmp_path_factory.mktemp("hub") / "classifier")


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory) -> str:
    return save_module(FeatureVector(), tmp_path_factory.mktemp("hub") / "features")


def photo(height: int, width: int, seed: int = 0, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], axis=-1)
    return np.clip(base * np.array(tint) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_published_classifier_exported_with_a_labels_file(classifier_dir, tmp_path, capsys):
    labels = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n")
    models = tmp_path / "models"
    argv = ["hub", classifier_dir, "--name", "hub_classifier", "--labels", str(labels_file)]
    assert cli([*argv, "--models-dir", str(models)]) == 0
    folder = models / "hub_classifier" / "1"
    assert f"saved_model_cli show --dir {folder} --all" in capsys.readouterr().out

    metadata = read_metadata(folder)
    assert metadata["labels"] == labels
    assert metadata["architecture"] == f"tfhub:{portable_path(classifier_dir)}"  # no machine path
    assert metadata["input_size"] == [HUB_SIZE, HUB_SIZE]
    assert metadata["params"] == 6 * CLASSES + CLASSES  # the hub module's variables are counted
    assert metadata["flops"] > 0 and metadata["dataset"] == "imagenet-1k"
    assert metadata["metrics"] == {"top1": None, "top5": None}
    assert metadata["command"].startswith(
        f"python -m training hub {portable_path(classifier_dir)} --name hub_classifier"
    )

    # Reloaded: probabilities = softmax(hub(ImageNet-normalized, resized pixels)), on both signatures.
    saved = tf.saved_model.load(str(folder))
    blob = jpeg(photo(300, 260))
    pixels = tf.io.decode_jpeg(blob, channels=3)
    scaled = (resize_images(pixels, HUB_SIZE).numpy() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    expected = softmax(Classifier()(tf.constant(scaled[None], tf.float32)).numpy())
    from_bytes = saved.signatures["serve_bytes"](image_bytes=tf.constant([blob]))["probabilities"]
    from_pixels = saved.signatures["serving_default"](images=pixels[None])["probabilities"]
    np.testing.assert_allclose(from_bytes.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(from_pixels.numpy(), expected, atol=1e-5)


def test_labels_must_match_the_hub_models_outputs(classifier_dir, tmp_path, capsys):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("cat\ndog\n")
    argv = ["hub", classifier_dir, "--labels", str(labels_file), "--models-dir", str(tmp_path / "m")]
    assert cli(argv) == 2
    assert "2 labels for a model with 5 outputs" in capsys.readouterr().err
    assert cli(["hub", classifier_dir, "--models-dir", str(tmp_path / "m")]) == 2
    assert "the model has 5 outputs; pass --labels" in capsys.readouterr().err


def test_a_1000_class_model_gets_the_imagenet_names_by_default(tmp_path):
    hub_dir = save_module(Classifier(classes=1000), tmp_path / "imagenet_classifier")
    assert cli(["hub", hub_dir, "--name", "in1k", "--models-dir", str(tmp_path / "models")]) == 0
    assert read_metadata(tmp_path / "models" / "in1k" / "1")["labels"] == imagenet1k_labels()


def test_imagenet1k_labels_are_the_standard_order_and_distinct():
    labels = imagenet1k_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert labels[:3] == ["tench", "goldfish", "great white shark"]
    assert labels[388] == "giant panda" and labels[999] == "toilet paper"
    assert any(label.startswith("missile (n") for label in labels)


def test_a_keras_made_savedmodel_runs_in_inference_mode(tmp_path):
    """Published Keras models (like the ConvNeXt ones) take ``training``: BatchNorm and Dropout
    must run in inference mode inside the wrapped model."""
    import tf_keras  # what the published models were made with (a tensorflow-hub dependency)

    inputs = tf_keras.Input((32, 32, 3))
    x = tf_keras.layers.Conv2D(4, 3)(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.Dropout(0.5)(tf_keras.layers.GlobalAveragePooling2D()(x))
    published = tf_keras.Model(inputs, tf_keras.layers.Dense(CLASSES)(x))
    published.save(tmp_path / "keras_made", save_format="tf")

    layer = HubModel(str(tmp_path / "keras_made"))
    assert layer.takes_training and not layer.trainable
    model = build_hub_model(str(tmp_path / "keras_made"), image_size=32, preprocessing="unit")
    images = photo(32, 32)[None].astype("float32")
    expected = softmax(published(images / 255, training=False).numpy())
    for _ in range(3):
        np.testing.assert_allclose(model(images, training=False), expected, atol=1e-5)


def test_the_hub_backbone_is_frozen_and_only_the_new_head_trains(feature_dir):
    model = build_hub_model(feature_dir, image_size=32, preprocessing="unit", num_classes=3)
    hub_layer = next(layer for layer in model.get_layer("hub_backbone").layers if isinstance(layer, HubModel))
    hub_before = hub_layer.module.kernel.numpy().copy()
    assert sorted(w.path.split("/")[-2:][0] for w in model.trainable_weights) == ["head", "head"]
    head_before = [w.numpy().copy() for w in model.trainable_weights]

    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    images = np.stack([photo(32, 32, seed=s) for s in range(4)])
    model.fit(images, np.eye(3)[[0, 1, 2, 0]], epochs=2, verbose=0)
    np.testing.assert_array_equal(hub_before, hub_layer.module.kernel.numpy())
    assert any(
        not np.allclose(b, w.numpy()) for b, w in zip(head_before, model.trainable_weights, strict=True)
    )


def make_folder_dataset(root: Path, per_class: int = 10) -> Path:
    """Two Imagenette classes of small generated photos, each class with its own colour cast."""
    tints = {"n01440764": (1.0, 0.3, 0.3), "n03888257": (0.3, 0.3, 1.0)}
    for index, (class_id, tint) in enumerate(tints.items()):
        (root / class_id).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(photo(40, 48, seed=100 * index + i, tint=tint)).save(root / class_id / f"{i}.png")
    return root


def test_fine_tune_a_new_head_for_one_epoch_then_export(feature_dir, tmp_path):
    data = make_folder_dataset(tmp_path / "tiny_imagenette")
    models = tmp_path / "models"
    argv = [
        "hub",
        feature_dir,
        "--name",
        "hub_tuned",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--preprocessing",
        "unit",
        "--models-dir",
        str(models),
    ]
    assert cli(argv) == 0

    folder = models / "hub_tuned" / "1"
    metadata = read_metadata(folder)
    assert metadata["labels"] == ["tench", "parachute"]
    assert metadata["dataset"] == "tiny_imagenette" and metadata["input_size"] == [32, 32]
    assert 0.0 <= metadata["metrics"]["top1"] <= 1.0
    assert metadata["params"] == 6 * FEATURES + FEATURES * 2 + 2  # hub module + new head
    assert metadata["fine_tuning"]["splits"] == {"train": 12, "validation": 4, "test": 4}
    assert "--data" in metadata["command"] and "--epochs 1" in metadata["command"]

    saved = tf.saved_model.load(str(folder))
    blobs = [jpeg(photo(40, 48, tint=(1.0, 0.3, 0.3))), jpeg(photo(64, 50, tint=(0.3, 0.3, 1.0)))]
    probabilities = saved.signatures["serve_bytes"](image_bytes=tf.constant(blobs))["probabilities"].numpy()
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (
        json.loads((folder / "metadata.json").read_text())["architecture"]
        == f"tfhub:{portable_path(feature_dir)}"
    )


def test_labels_and_data_together_are_refused(feature_dir, tmp_path, capsys):
    argv = ["hub", feature_dir, "--data", str(tmp_path), "--labels", "x.txt", "--models-dir", str(tmp_path)]
    assert cli(argv) == 2
    assert "with --data the labels come from the dataset" in capsys.readouterr().err


def test_a_handle_that_cannot_be_loaded_is_a_clear_error(tmp_path, capsys):
    assert cli(["hub", str(tmp_path / "absent"), "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not load" in err and "absent" in err and "TFHUB_CACHE_DIR" in err


def keras_made_feature_vector(path: Path) -> str:
    """Stands for the published ConvNeXt feature vector: a tf-keras SavedModel (conv, BatchNorm)."""
    import tf_keras

    inputs = tf_keras.Input((None, None, 3))
    x = tf_keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(tf_keras.layers.ReLU()(x))
    published = tf_keras.Model(inputs, tf_keras.layers.Dense(FEATURES, activation="tanh", name="fc")(x))
    published.save(path, save_format="tf")
    return str(path)


def test_fine_tune_trains_the_hub_model_only_after_the_heads_warm_up(tmp_path):
    from training.hub import hub_layer

    handle = keras_made_feature_vector(tmp_path / "fe")
    model = build_hub_model(handle, image_size=32, preprocessing="unit", num_classes=2, fine_tunable=True)
    hub = hub_layer(model)
    module_vars = {v.name: v for v in hub.module.variables}
    before = {name: v.numpy().copy() for name, v in module_vars.items()}
    assert not hub.trainable and len(model.trainable_weights) == 2  # the head only
    images = np.stack(
        [photo(32, 32, seed=s, tint=(1.0, 0.3, 0.3) if s % 2 else (0.3, 0.3, 1.0)) for s in range(8)]
    )
    labels = np.eye(2)[[s % 2 for s in range(8)]]

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
    assert all(np.array_equal(before[n], v.numpy()) for n, v in module_vars.items())  # frozen

    hub.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    assert len(model.trainable_weights) == 2 + len(hub.module.trainable_variables)
    model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
    moved = {n for n, v in module_vars.items() if not np.array_equal(before[n], v.numpy())}
    assert {n for n in moved if "kernel" in n} >= {n for n in module_vars if "kernel" in n}
    assert not any("moving" in n for n in moved)  # BatchNorm statistics: inference mode
    # The model computes with the updated variables (the module reads them itself).
    assert any("conv" in n for n in moved)


def test_hub_fine_tune_from_the_command_line(tmp_path):
    handle = keras_made_feature_vector(tmp_path / "fe")
    data = make_folder_dataset(tmp_path / "tiny_imagenette")
    models = tmp_path / "models"
    argv = [
        "hub",
        handle,
        "--name",
        "hub_ft",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--fine-tune",
        "--fine-tune-epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--preprocessing",
        "unit",
        "--models-dir",
        str(models),
    ]
    assert cli(argv) == 0
    metadata = read_metadata(models / "hub_ft" / "1")
    backbone = metadata["fine_tuning"]["backbone"]
    assert backbone["unfrozen_epochs"] == 1 and backbone["learning_rate"] == pytest.approx(1e-4)
    assert backbone["trainable_parameters"] > FEATURES * 2 + 2  # more than the head
    assert "--fine-tune" in metadata["command"]
    saved = tf.saved_model.load(str(models / "hub_ft" / "1"))
    out = saved.signatures["serving_default"](images=tf.zeros((1, 40, 50, 3), tf.uint8))
    assert out["probabilities"].shape == (1, 2)
