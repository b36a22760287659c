"""Export to the model repository: signatures, bytes == uint8, inactive augmentation, versions,
atomicity, metadata, and the ``python -m training export`` command."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from service.repository import REQUIRED_KEYS, is_complete, latest_version, read_metadata
from training.__main__ import main as cli
from training.end_to_end import RESIZE, augmentation_preset, build_end_to_end
from training.export import export_model
from training.flops import count_flops

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
LABELS = ["tench", "golf ball", "parachute"]


def tiny_backbone() -> keras.Model:
    """Logits from [batch, SIZE, SIZE, 3], with BatchNorm and Dropout (training=False matters)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(inputs, keras.layers.Dense(len(LABELS))(x), name="tiny")


def strong_model() -> keras.Model:
    """An end-to-end model whose augmentation changes every training-mode call."""
    return build_end_to_end(
        tiny_backbone(),
        num_classes=len(LABELS),
        image_size=SIZE,
        augmentation=augmentation_preset("strong"),
        preprocessing="imagenet",
        name="tiny_e2e",
        seed=3,
    )


def export(model, models_dir, **overrides) -> Path:
    options = dict(
        name="tiny",
        labels=LABELS,
        input_size=SIZE,
        architecture="tiny",
        dataset="generated",
        metrics={"top1": 0.5, "top5": 1.0},
        command="python -m training fit --arch tiny",
        models_dir=models_dir,
    )
    return export_model(model, **{**options, **overrides})


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return strong_model()


def plain_model_() -> keras.Model:
    """No augmentation: quicker to export, for the tests about folders and versions."""
    return build_end_to_end(tiny_backbone(), num_classes=len(LABELS), image_size=SIZE, preprocessing="unit")


@pytest.fixture(scope="module")
def plain_model() -> keras.Model:
    return plain_model_()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    return export(model, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def saved(exported):
    return tf.saved_model.load(str(exported))


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (gradients + noise), so JPEG keeps it close to the original."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def classify(saved, images: np.ndarray) -> np.ndarray:
    return saved.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()


def classify_bytes(saved, blobs: list[bytes]) -> np.ndarray:
    return saved.signatures["serve_bytes"](image_bytes=tf.constant(blobs))["probabilities"].numpy()


def test_both_signatures_with_their_inputs_and_outputs(saved):
    assert {"serving_default", "serve_bytes"} <= set(saved.signatures)
    images = saved.signatures["serving_default"].structured_input_signature[1]["images"]
    assert images.dtype == tf.uint8 and images.shape.as_list() == [None, None, None, 3]
    blobs = saved.signatures["serve_bytes"].structured_input_signature[1]["image_bytes"]
    assert blobs.dtype == tf.string and blobs.shape.as_list() == [None]
    for name in ("serving_default", "serve_bytes"):
        output = saved.signatures[name].structured_outputs["probabilities"]
        assert output.dtype == tf.float32 and output.shape.as_list() == [None, len(LABELS)]


def test_saved_model_cli_lists_both_signatures(exported):
    cli_path = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run(
        [str(cli_path), "show", "--dir", str(exported), "--all"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "signature_def['serving_default']" in shown
    assert "signature_def['serve_bytes']" in shown
    assert "inputs['images']" in shown and "DT_UINT8" in shown
    assert "inputs['image_bytes']" in shown and "DT_STRING" in shown


def test_a_jpeg_gets_the_same_answer_as_the_model_in_memory(model, saved):
    blob = encode(photo(180, 240), "JPEG")
    pixels = tf.io.decode_jpeg(blob, channels=3).numpy()[None]  # what the graph decodes
    expected = model(pixels.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(classify(saved, pixels), expected, atol=1e-6)
    np.testing.assert_allclose(classify_bytes(saved, [blob]), expected, atol=1e-5)
    assert np.argmax(classify_bytes(saved, [blob])) == np.argmax(expected)


def test_a_real_photo_gets_the_same_answer(model, saved, shared_imagenette):
    path = sorted(sorted(shared_imagenette.iterdir())[0].glob("*.JPEG"))[0]
    blob = path.read_bytes()
    pixels = tf.io.decode_image(blob, channels=3, expand_animations=False).numpy()[None]
    expected = model(pixels.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(classify_bytes(saved, [blob]), expected, atol=1e-5)
    np.testing.assert_allclose(classify(saved, pixels), expected, atol=1e-6)


def test_bytes_and_uint8_agree_on_a_batch_of_mixed_sizes_and_formats(saved):
    """One bytes request with images of different sizes and formats == each image on its own as
    uint8 pixels (decoded the way the graph decodes them)."""
    gray = photo(50, 40, seed=4)[..., 0]
    rgba = np.dstack([photo(45, 45, seed=5), np.full((45, 45), 200, np.uint8)])
    blobs = [
        encode(photo(120, 90, seed=1), "JPEG"),
        encode(photo(33, 200, seed=2), "PNG"),
        encode(photo(32, 32, seed=3), "JPEG"),
        encode(gray, "PNG"),
        encode(rgba, "PNG"),
        encode(photo(60, 70, seed=6), "BMP"),
        encode(photo(64, 48, seed=7), "GIF"),
    ]
    from_bytes = classify_bytes(saved, blobs)
    assert from_bytes.shape == (len(blobs), len(LABELS))
    for row, blob in zip(from_bytes, blobs, strict=True):
        pixels = tf.io.decode_image(blob, channels=3, expand_animations=False).numpy()
        np.testing.assert_allclose(row, classify(saved, pixels[None])[0], atol=1e-5)
    # PNG / BMP / GIF are lossless: the graph's RGB equals PIL's, so clients may decode either way.
    np.testing.assert_allclose(
        from_bytes[3], classify(saved, np.asarray(Image.fromarray(gray).convert("RGB"))[None])[0], atol=1e-5
    )
    np.testing.assert_allclose(from_bytes.sum(axis=1), 1.0, rtol=1e-5)


def test_augmentation_is_inactive_in_the_exported_signatures(model, saved):
    images = np.stack([photo(40, 56, seed=s) for s in range(4)])
    blobs = [encode(image, "PNG") for image in images]
    # The augmentation really changes images in training mode (its own layers, so that no
    # BatchNorm statistics of the exported model move)...
    augment = keras.Model(model.input, model.get_layer("rand_augment").output)
    pixels = images.astype("float32")
    assert not np.allclose(augment(pixels, training=True), augment(pixels, training=True))
    # ...but the SavedModel's answers are deterministic and equal inference mode.
    expected = model(images.astype("float32"), training=False).numpy()
    for _ in range(3):
        np.testing.assert_array_equal(classify(saved, images), classify(saved, images))
        np.testing.assert_allclose(classify(saved, images), expected, atol=1e-6)
        np.testing.assert_allclose(classify_bytes(saved, blobs), expected, atol=1e-5)


def test_metadata_has_every_required_key_with_sane_values(model, exported):
    metadata = read_metadata(exported)
    assert set(REQUIRED_KEYS) <= set(metadata)
    assert metadata["name"] == "tiny" and metadata["version"] == 1 == int(exported.name)
    assert metadata["labels"] == LABELS
    assert metadata["input_size"] == [SIZE, SIZE]
    assert metadata["params"] == model.count_params() > 0
    assert metadata["flops"] == count_flops(model, (SIZE, SIZE, 3)) > 0
    assert metadata["metrics"] == {"top1": 0.5, "top5": 1.0}
    assert metadata["dataset"] == "generated" and metadata["command"].startswith("python -m training")
    assert datetime.fromisoformat(metadata["created"]).tzinfo is not None
    assert set(metadata["signatures"]) == {"serving_default", "serve_bytes"}
    assert metadata["preprocessing"]["resize"] == RESIZE["interpolation"]
    assert metadata["preprocessing"]["crop_to_aspect_ratio"] is RESIZE["crop_to_aspect_ratio"]
    assert metadata["preprocessing"]["antialias"] is RESIZE["antialias"]


def test_load_metadata_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="metadata.json is missing"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"name": "x", "version": 1}))
    with pytest.raises(ValueError, match="'architecture'.*'labels'"):
        read_metadata(tmp_path)


def test_versions_increment_and_nothing_is_overwritten(plain_model, tmp_path):
    model = plain_model
    first = export(model, tmp_path)
    second = export(model, tmp_path, metrics={"top1": 0.75, "top5": 1.0})
    assert (first.name, second.name) == ("1", "2")
    assert latest_version(tmp_path, "tiny") == 2
    before = (first / "metadata.json").read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten.*as 3"):
        export(model, tmp_path, version=1)
    assert (first / "metadata.json").read_bytes() == before
    assert export(model, tmp_path, version=7).name == "7"
    assert export(model, tmp_path).name == "8"
    assert latest_version(tmp_path, "tiny") == 8
    assert latest_version(tmp_path, "absent") is None
    assert not [p.name for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]


def test_incomplete_folders_are_not_versions_and_are_not_overwritten(plain_model, tmp_path):
    model = plain_model
    folder = tmp_path / "tiny"
    (folder / "4").mkdir(parents=True)  # numbered, but no SavedModel or metadata
    (folder / "4" / "keep.txt").write_text("someone's files")
    (folder / ".tmp-5-123").mkdir()  # what a crash leaves
    (folder / ".tmp-5-123" / "saved_model.pb").write_bytes(b"partial")
    assert not is_complete(folder / "4") and latest_version(tmp_path, "tiny") is None
    assert export(model, tmp_path).name == "5"
    assert (folder / "4" / "keep.txt").read_text() == "someone's files"
    assert latest_version(tmp_path, "tiny") == 5


def test_a_process_killed_mid_export_leaves_no_valid_looking_version(plain_model, tmp_path):
    """Kill -9 an exporting process (after its first version) while a temporary folder exists:
    only complete versions remain, numbered without gaps, and nothing else counts as one."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
        "from tests.test_export import export, plain_model_; m = plain_model_(); "
        "[export(m, Path(sys.argv[1])) for _ in range(50)]"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(REPO)], env=env)
    folder = tmp_path / "tiny"
    try:
        deadline = time.monotonic() + 120
        while not ((folder / "1").is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir())):
            assert process.poll() is None, "the exporting process ended before it was killed"
            assert time.monotonic() < deadline, "no export started in time"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    numbered = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    assert leftovers, "the process was killed while a temporary folder existed"
    assert numbered and numbered == list(range(1, len(numbered) + 1))
    assert all(is_complete(folder / str(v)) for v in numbered)
    assert latest_version(tmp_path, "tiny") == numbered[-1]
    for version in numbered:
        read_metadata(folder / str(version))
        tf.saved_model.load(str(folder / str(version)))
    assert export(plain_model, tmp_path).name == str(numbered[-1] + 1)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"labels": ["a", "b"]}, "2 labels for a model with 3 outputs"),
        ({"labels": ["a", "a", "b"]}, "distinct"),
        ({"metrics": {"top1": 0.5}}, "'top5'"),
        ({"metrics": {"top1": 81.2, "top5": 95.0}}, "not a fraction"),
        ({"name": "../escape"}, "model name"),
        ({"input_size": 64}, "'resize' layer"),
        ({"version": 0}, "positive integer"),
    ],
)
def test_bad_export_arguments_are_clear_errors(plain_model, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        export(plain_model, tmp_path, **overrides)
    assert not (tmp_path / "tiny").exists() or not any((tmp_path / "tiny").iterdir())


def test_a_model_without_the_resize_layer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no layer named 'resize'"):
        export(tiny_backbone(), tmp_path)


def test_cli_exports_a_finished_fit_run(model, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "tiny_run"
    run_dir.mkdir(parents=True)
    model.save(run_dir / "best.keras")
    run = {
        "arch": "tiny",
        "name": "tiny",
        "labels": LABELS,
        "image_size": [SIZE, SIZE],
        "dataset": "generated",
        "command": "python -m training fit --arch tiny",
        "config": {},
        "metrics": {"top1": 0.625, "top5": 1.0, "loss": 0.9},
    }
    (run_dir / "run.json").write_text(json.dumps(run))
    models = tmp_path / "models"
    assert cli(["export", str(run_dir), "--models-dir", str(models), "--name", "from_run"]) == 0
    out = capsys.readouterr().out
    assert f"saved_model_cli show --dir {models / 'from_run' / '1'} --all" in out
    assert "records no dataset: give --data" in out  # the run names no data: the SavedModel only
    metadata = read_metadata(models / "from_run" / "1")
    assert (
        metadata["metrics"] == {"top1": 0.625, "top5": 1.0} and metadata["run"] == run_dir.name
    )  # outside the repository: the name only
    saved = tf.saved_model.load(str(models / "from_run" / "1"))
    images = np.stack([photo(48, 64, seed=9)])
    np.testing.assert_allclose(
        classify(saved, images), model(images.astype("float32"), training=False), atol=1e-6
    )

    assert (
        cli(["export", str(run_dir), "--models-dir", str(models), "--name", "from_run", "--version", "1"])
        == 2
    )
    assert "never overwritten" in capsys.readouterr().err
    (run_dir / "run.json").write_text(json.dumps({**run, "metrics": None}))
    assert cli(["export", str(run_dir), "--models-dir", str(models)]) == 2
    assert "not finished" in capsys.readouterr().err
