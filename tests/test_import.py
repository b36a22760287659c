"""``python -m training import``: bring your own Keras / SavedModel classifier.

Two tiny classifiers are built here (random weights, sharpened so their answers are decisive): one
takes float pixels scaled "tf" (-1..1, the keras.applications MobileNet convention, given with
``--preprocessing tf``) and returns logits; one takes uint8 pixels of any size and ends in a
softmax. Each is saved as ``.keras`` and as a SavedModel (``model.export``) and imported; the
version must pass the repository's own checks, and both signatures must give the original model's
probabilities on real photos (Imagenette beside the repo when present, generated images otherwise)
after the same resize.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from service.repository import checksum_problem, read_metadata

LABELS = ["tench", "church", "parachute"]
FLOAT_SIZE = (48, 48)
UINT8_SIZE = (40, 40)


# ---------------------------------------------------------------------------------- fixtures


def float_model():
    """float32 [48, 48, 3] in, pixels expected in -1..1 ("tf"), logits out."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((*FLOAT_SIZE, 3), name="pixels")
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), name="logits")(x)
    return sharpen(keras.Model(inputs, outputs, name="tiny_float"), "logits")


def uint8_model():
    """uint8 [any, any, 3] in, scales by itself, softmax out."""
    import keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((None, None, 3), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 255)(keras.ops.cast(inputs, "float32"))
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="classifier")(x)
    return sharpen(keras.Model(inputs, outputs, name="tiny_uint8"), "classifier")


def sharpen(model, layer: str, factor: float = 30.0):
    dense = model.get_layer(layer)
    dense.set_weights([w * factor for w in dense.get_weights()])
    return model


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """``{kind: (original keras model, path, import options)}`` for the four sources."""
    folder = tmp_path_factory.mktemp("sources")
    found = {}
    for name, model, options in (
        ("float", float_model(), {"preprocessing": "tf"}),
        ("uint8", uint8_model(), {"image_size": list(UINT8_SIZE)}),
    ):
        model.save(folder / f"{name}.keras")
        model.export(str(folder / f"{name}_savedmodel"), verbose=False)
        found[f"{name}-keras"] = (model, folder / f"{name}.keras", options)
        found[f"{name}-savedmodel"] = (model, folder / f"{name}_savedmodel", options)
    return found


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Encoded photos of different sizes: Imagenette JPEGs when present, else generated PNG/JPEG."""
    from helpers import SHARED_DATA

    if SHARED_DATA.is_dir():
        classes = sorted(p for p in SHARED_DATA.iterdir() if p.is_dir())[:3]
        return [sorted(c.iterdir())[0].read_bytes() for c in classes]
    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for i, (height, width) in enumerate(((120, 90), (64, 200), (300, 300))):
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
        pixels = (pixels + rng.integers(0, 40, pixels.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG" if i % 2 else "JPEG")
        encoded.append(buffer.getvalue())
    return encoded


@pytest.fixture(scope="module")
def imported(sources, tmp_path_factory):
    """``{kind: version folder}``: every source imported into one repository."""
    from training.import_model import import_model

    models_dir = tmp_path_factory.mktemp("models")
    return {
        kind: import_model(
            path,
            labels=LABELS,
            name=kind,
            models_dir=models_dir,
            command="pytest",
            log=lambda _: None,
            **options,
        )
        for kind, (_, path, options) in sources.items()
    }


def expected_probabilities(model, kind: str, image: np.ndarray) -> np.ndarray:
    """The original model's probabilities on ``image`` after the shared resize (and the scaling
    or uint8 rounding it expects), computed here from the definitions, not from the import."""
    import keras

    from training.end_to_end import resize_images

    if kind.startswith("float"):
        pixels = keras.ops.convert_to_numpy(resize_images(image[None], FLOAT_SIZE)) / 127.5 - 1.0
        return keras.ops.convert_to_numpy(keras.ops.softmax(model(pixels), axis=-1))[0]
    resized = keras.ops.convert_to_numpy(resize_images(image[None], UINT8_SIZE))
    return keras.ops.convert_to_numpy(model(np.clip(np.round(resized), 0, 255).astype(np.uint8)))[0]


# ------------------------------------------------------------------------------------- tests

KINDS = ("float-keras", "float-savedmodel", "uint8-keras", "uint8-savedmodel")


@pytest.mark.parametrize("kind", KINDS)
def test_import_writes_a_valid_version_with_checksums(imported, kind):
    version = imported[kind]
    metadata = read_metadata(version)  # the repository's own validation
    assert version.name == "1" and metadata["name"] == kind and metadata["labels"] == LABELS
    assert checksum_problem(version, metadata["files"]) is None
    assert metadata["input_size"] == list(FLOAT_SIZE if kind.startswith("float") else UINT8_SIZE)
    assert set(metadata["signatures"]) == {"serving_default", "serve_bytes"}
    # What is not known is stated so, not invented.
    assert metadata["metrics"] == {"top1": None, "top5": None}
    assert metadata["dataset"] is None
    assert {"dataset", "metrics"} <= set(metadata["unknown"])
    assert "runtimes" not in metadata  # no CPU form without held-out images: auto serves the SavedModel
    details = metadata["imported"]
    assert details["format"] == ("keras" if kind.endswith("keras") else "saved_model")
    if kind.startswith("float"):
        assert details["scaling"] == "tf" and details["outputs"].startswith("logits")
        assert details["outputs_how"].startswith("detected")
    else:
        assert details["scaling"] == "none" and details["outputs"] == "probabilities"


@pytest.mark.parametrize("kind", KINDS)
def test_both_signatures_give_the_original_models_probabilities(imported, sources, photos, kind):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(imported[kind]))
    model = sources[kind][0]
    for data in photos:
        image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        expected = expected_probabilities(model, kind, image)
        pixels = loaded.signatures["serving_default"](images=tf.constant(image[None]))["probabilities"]
        from_bytes = loaded.signatures["serve_bytes"](image_bytes=tf.constant([data]))["probabilities"]
        np.testing.assert_allclose(pixels.numpy()[0], expected, atol=2e-4)
        np.testing.assert_allclose(from_bytes.numpy()[0], expected, atol=2e-4)
        assert abs(float(np.sum(expected)) - 1) < 1e-4
    # the random weights were sharpened: the photos get different, decisive answers
    assert max(float(np.max(expected_probabilities(model, kind, _decode(d)))) for d in photos) > 0.5


def _decode(data: bytes) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


@pytest.mark.slow  # ~20 s on 2 shared cores: MobileNetV2's export and FLOP count
def test_a_keras_applications_model_is_imported_with_its_own_preprocess_input(photos, tmp_path):
    """MobileNetV2 (random weights, 32 px): "tf" scaling detected from its name, its softmax
    detected from its answers; the import answers as keras' own ``preprocess_input`` + the model."""
    import keras
    import tensorflow as tf

    from training.end_to_end import resize_images
    from training.import_model import import_model

    keras.utils.set_random_seed(4)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=3)
    model.save(tmp_path / "mobilenet.keras")
    version = import_model(
        tmp_path / "mobilenet.keras", labels=LABELS, name="mobile", models_dir=tmp_path, log=lambda _: None
    )
    details = read_metadata(version)["imported"]
    assert (details["scaling"], details["outputs"]) == ("tf", "probabilities")
    assert details["scaling_how"].startswith("detected: keras.applications mobilenet_v2")
    serve_bytes = tf.saved_model.load(str(version)).signatures["serve_bytes"]
    for data in photos:
        resized = keras.ops.convert_to_numpy(resize_images(_decode(data)[None], (32, 32)))
        expected = keras.ops.convert_to_numpy(
            model(keras.applications.mobilenet_v2.preprocess_input(resized))
        )
        found = serve_bytes(image_bytes=tf.constant([data]))["probabilities"].numpy()
        np.testing.assert_allclose(found, expected, atol=2e-4)


def test_keras_applications_preprocessing_is_detected_by_name():
    import keras

    from training.import_model import choose_preprocessing

    resnet_like = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()], name="resnet50")
    assert choose_preprocessing(resnet_like, "float32", "auto") == (
        "caffe",
        "detected: keras.applications resnet model 'resnet50' (preprocess_input caffe)",
    )
    anonymous = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()], name="mine")
    with pytest.raises(ValueError, match="give --preprocessing"):
        choose_preprocessing(anonymous, "float32", "auto")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from training.__main__ import main

    code = main(["import", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def not_an_image_model(tmp_path_factory) -> Path:
    import keras

    inputs = keras.Input((10,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="tabular")
    path = tmp_path_factory.mktemp("tabular") / "tabular.keras"
    model.save(path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("neither", "is neither a .keras file nor a SavedModel folder"),
        ("labels", "4 labels for a model with 3 outputs"),
        ("not-image", "not an image tensor"),
        ("name", "model name '../escape' must be letters"),
        ("data", "not the model's 3 labels: 3 folders; labels without a folder: church, parachute, tench"),
        ("version", "already exists and versions are never overwritten"),
    ],
)
def test_refusals_are_one_line_with_status_2(
    case, message, sources, labels_file, not_an_image_model, tmp_path, capsys
):
    source = sources["float-keras"][1]
    argv = [source, "--labels", labels_file, "--name", "refused", "--preprocessing", "tf"]
    argv += ["--models-dir", tmp_path / "models"]
    if case == "neither":
        argv[0] = labels_file
    elif case == "labels":
        argv[2] = tmp_path / "four.txt"
        argv[2].write_text("a\nb\nc\nd\n", encoding="utf-8")
    elif case == "not-image":
        argv[0] = not_an_image_model
    elif case == "name":
        argv[4] = "../escape"
    elif case == "version":
        (tmp_path / "models" / "refused" / "1").mkdir(parents=True)
        argv += ["--version", "1"]
    else:  # class folders that are not the labels: refused before anything is written
        for label in ("one", "two", "three"):
            (tmp_path / "data" / label).mkdir(parents=True)
        argv += ["--data", tmp_path / "data"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("saved_model.pb"))


COLORS = ["red", "blue", "green"]  # output order; sorted, the folders read blue, green, red


def color_model():
    """uint8 [any, any, 3] in; output i is the mean of the channel that makes ``COLORS[i]``
    (red: R, blue: B, green: G), sharpened: a solid-colour photo is classified by its colour."""
    import keras

    inputs = keras.Input((None, None, 3), dtype="uint8", name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(keras.ops.cast(inputs, "float32") / 255)
    dense = keras.layers.Dense(3, name="logits", use_bias=False)
    model = keras.Model(inputs, dense(x), name="colors")
    dense.set_weights([30 * np.eye(3)[:, [0, 2, 1]]])  # R -> red, B -> blue, G -> green
    return model


def test_data_folders_map_to_labels_by_name_in_any_order(tmp_path, capsys):
    """Labels not in alphabetical order (red, blue, green) and class folders named like them:
    matched by name, so every held-out photo is scored against its own label (top-1 1.0; in sorted
    folder order two classes of three would be swapped)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for color, channel in zip(COLORS, (0, 2, 1), strict=True):
        (tmp_path / "data" / color).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 60, (24 + i, 30, 3), dtype=np.uint8)
            pixels[..., channel] = 200 + i
            Image.fromarray(pixels).save(tmp_path / "data" / color / f"{i}.png")
    color_model().save(tmp_path / "colors.keras")
    (tmp_path / "labels.txt").write_text("\n".join(COLORS) + "\n", encoding="utf-8")
    with RepositoryObserver(tmp_path / "models", "colors") as seen:
        code, out, err = run_cli(
            [tmp_path / "colors.keras", "--labels", tmp_path / "labels.txt", "--name", "colors"]
            + ["--image-size", "24", "--models-dir", tmp_path / "models", "--data", tmp_path / "data"]
            + ["--precisions", ""],
            capsys,
        )
    assert code == 0, err
    metadata = read_metadata(tmp_path / "models" / "colors" / "1")
    assert metadata["labels"] == COLORS
    assert metadata["metrics"]["top1"] == 1.0 and metadata["metrics"]["images"] == 6, metadata["metrics"]
    # The version appeared complete: as the service's watcher polls, it never saw it unmeasured.
    assert seen.looks and seen.versions == [[1]] and seen.unmeasured == 0, seen


class RepositoryObserver(threading.Thread):
    """Looks at a model's versions every 5 ms, as the service's watcher does every poll: which
    complete versions it saw, and how often one had no measured runtimes or metrics yet."""

    def __init__(self, models_dir: Path, name: str):
        super().__init__(daemon=True)
        self.models_dir, self.name = models_dir, name
        self.looks, self.unmeasured, self.versions, self.done = 0, 0, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.look()

    def look(self) -> None:
        from service.repository import complete_versions

        versions = complete_versions(self.models_dir, self.name)
        self.looks += 1
        if versions and versions not in self.versions:
            self.versions.append(versions)
        for version in versions:
            metadata = read_metadata(self.models_dir / self.name / str(version))
            self.unmeasured += not metadata.get("runtimes") or metadata["metrics"]["top1"] is None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()
        self.look()  # once more, after the command


def test_command_line_imports_and_says_what_it_skipped(sources, labels_file, tmp_path, capsys):
    code, out, err = run_cli(
        [sources["uint8-savedmodel"][1], "--labels", labels_file, "--name", "mine", "--image-size", "40"]
        + ["--models-dir", tmp_path / "models"],
        capsys,
    )
    assert code == 0, err
    assert "loading" in out and "exporting the SavedModel" in out  # a line per step
    assert f"to {tmp_path / 'models' / 'mine' / '1'}" in out
    assert "not evaluated, not optimized" in out and "--data" in out
    metadata = read_metadata(tmp_path / "models" / "mine" / "1")
    assert metadata["command"].startswith("python -m training import")


# ------------------------------------------------------------------------------ slow: the server


@pytest.mark.slow
def test_bentoml_serves_the_imported_model(sources, photos, bentoml_home, tmp_path):
    """A real ``bentoml serve`` on a repository holding only the imported model."""
    import tensorflow as tf
    from helpers import Server, classify, expect, server_env

    from training.import_model import import_model

    model, path, options = sources["float-keras"]
    version = import_model(
        path, labels=LABELS, name="byom", models_dir=tmp_path / "models", log=lambda _: None, **options
    )
    env = {**server_env(version, bentoml_home), "CONVZOO_MODEL": "byom"}
    server = Server([], env, tmp_path / "serve.log")
    try:
        server.wait_ready()
        loaded = tf.saved_model.load(str(version)).signatures["serve_bytes"]
        for data in photos:
            name = "photo.png" if data.startswith(b"\x89PNG") else "photo.jpg"
            [answer] = expect(classify(server, [(name, data)]), 200, server)
            probabilities = loaded(image_bytes=tf.constant([data]))["probabilities"].numpy()[0]
            assert answer["label"] == LABELS[int(np.argmax(probabilities))]
            assert abs(answer["score"] - float(np.max(probabilities))) < 0.05
        metadata = expect(requests.post(f"{server.url}/metadata", json={}, timeout=30), 200, server)
        assert (metadata["name"], metadata["version"], metadata["labels"]) == ("byom", 1, LABELS)
    finally:
        server.stop()


@pytest.mark.slow
def test_data_gives_held_out_metrics_and_gated_cpu_forms(shared_imagenette, tmp_path, capsys):
    """With --data: the test split's metrics instead of unknown ones, and the OpenVINO forms
    measured against the SavedModel with the gate's verdict (what the service's auto reads)."""
    import keras

    classes = sorted(p.name for p in shared_imagenette.iterdir() if p.is_dir())
    keras.utils.set_random_seed(3)
    inputs = keras.Input((*FLOAT_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=2)(inputs))
    keras.Model(inputs, keras.layers.Dense(len(classes))(x), name="ten").save(tmp_path / "ten.keras")
    (tmp_path / "labels.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    code, out, err = run_cli(
        [tmp_path / "ten.keras", "--labels", tmp_path / "labels.txt", "--name", "ten"]
        + ["--preprocessing", "unit", "--models-dir", tmp_path / "models", "--data", shared_imagenette]
        + ["--limit", "40", "--calibration", "10", "--precisions", "fp32"],
        capsys,
    )
    assert code == 0, err
    metadata = read_metadata(tmp_path / "models" / "ten" / "1")
    assert 0 <= metadata["metrics"]["top1"] <= metadata["metrics"]["top5"] <= 1
    assert metadata["metrics"]["images"] == 40
    assert "test split" in metadata["unknown"]["metrics"]
    assert {"tensorflow", "openvino-fp32"} <= set(metadata["runtimes"])
    assert metadata["runtimes"]["openvino-fp32"]["test"]["agreement"] > 0.9
    assert "passed" in metadata["runtimes"]["openvino-fp32"]["gate"]
    assert "gate" in out and "held-out top-1" in out


def test_unknowns_are_validated_and_left_out_of_bentomls_metadata():
    from service.repository import InvalidExport, validate_metadata
    from service.serving.model_store import without_nulls

    metadata = {"labels": ["a"], "metrics": {"top1": None, "top5": None}, "dataset": None}
    validate_metadata({**metadata, "unknown": {"metrics": "no held-out data"}}, "here", required=())
    for bad in ({"metrics": ""}, ["metrics"], {"metrics": None}):
        with pytest.raises(InvalidExport, match="'unknown' is not"):
            validate_metadata({**metadata, "unknown": bad}, "here", required=())
    assert without_nulls({**metadata, "runs": [None, 1]}) == {"labels": ["a"], "metrics": {}, "runs": [1]}
