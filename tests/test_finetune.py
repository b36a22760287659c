"""Fine-tuning from a twin's weights file: frozen warm-up, then everything at two learning rates."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from training_helpers import make_folder

from training import __main__ as cli
from training import finetune, fit
from training.architectures.weights import build_twin
from training.kit import compile_model
from training.recipe import Recipe
from training.runs import build_model

ARCH = "mobilenet_v3_small"  # the smallest twin
SIZE = 64


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    return parser.parse_args(list(argv))


def config_of(args: argparse.Namespace) -> dict:
    return Recipe.from_args(args).config()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    twin = build_twin(ARCH)
    path = tmp_path_factory.mktemp("weights") / f"{ARCH}.weights.h5"
    twin.save_weights(path)
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=16)  # 3 classes: 36 / 6 / 6 images


def snapshot(model) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in finetune.backbone_of(model).weights}


def changed(before: dict, after: dict, keep) -> set[str]:
    return {path for path in before if keep(path) and not np.array_equal(before[path], after[path])}


def test_frozen_epochs_keep_the_backbone_then_unfrozen_ones_train_it(weights_file):
    args = parse(
        "--arch",
        ARCH,
        "--data",
        "x",
        "--image-size",
        str(SIZE),
        "--epochs",
        "2",
        "--weights",
        str(weights_file),
        "--freeze-epochs",
        "1",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-2",
        "--augment",
        "none",
    )
    config = config_of(args)
    assert config["weights"] == str(weights_file.resolve()) and config["freeze_epochs"] == 1
    model = build_model(config, num_classes=3)
    compile_model(model, config, steps_per_epoch=2)
    assert type(model.optimizer).__name__ == "FineTuneAdamW"
    assert model.optimizer.head_variables == ["predictions/kernel", "predictions/bias"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, SIZE, SIZE, 3)).astype("float32")
    labels = np.eye(3)[rng.integers(0, 3, 16)]
    schedule = finetune.FineTuneSchedule(config["freeze_epochs"])

    def is_head(path):
        return path.startswith("predictions/")

    def is_bn(path):
        return "_bn/" in path

    start = snapshot(model)
    model.fit(images, labels, batch_size=8, epochs=1, callbacks=[schedule], verbose=0)
    frozen = snapshot(model)
    assert not changed(start, frozen, lambda p: not is_head(p))  # backbone: every weight, BN stats too
    assert changed(start, frozen, is_head) == {"predictions/kernel", "predictions/bias"}

    model.fit(images, labels, batch_size=8, initial_epoch=1, epochs=2, callbacks=[schedule], verbose=0)
    unfrozen = snapshot(model)
    trained = changed(frozen, unfrozen, lambda p: not is_head(p))
    convs = {p for p in start if p.endswith("_conv/kernel")}
    assert convs and convs <= trained  # every convolution of the backbone moved
    assert not changed(frozen, unfrozen, is_bn)  # BatchNormalization: inference mode throughout


def test_the_backbone_learns_at_a_fraction_of_the_heads_rate():
    head = keras.Variable(np.zeros(3), name="kernel")
    body = keras.Variable(np.zeros(3), name="weights")
    optimizer = finetune.FineTuneSGD(1.0, backbone_lr_scale=0.1, head_variables=[head.path])
    optimizer.apply([np.ones(3), np.ones(3)], [head, body])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head), -1.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(body), -0.1, rtol=1e-6)
    restored = finetune.FineTuneSGD.from_config(optimizer.get_config())
    assert restored.backbone_lr_scale == 0.1 and restored.head_variables == [head.path]


def test_freeze_epochs_without_weights_is_refused():
    with pytest.raises(ValueError, match="--freeze-epochs needs --weights"):
        config_of(parse("--arch", ARCH, "--data", "x", "--freeze-epochs", "2"))
    assert "weights" not in config_of(parse("--arch", ARCH, "--data", "x"))  # old runs unchanged


def test_fit_fine_tunes_from_a_weights_file(weights_file, folder, tmp_path):
    argv = [
        "fit",
        "--no-optimize",  # OpenVINO forms: test_runtimes, and test_fit's resume test
        "--arch",
        ARCH,
        "--data",
        str(folder),
        "--image-size",
        str(SIZE),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--weights",
        str(weights_file),
        "--freeze-epochs",
        "1",
        "--backbone-lr-scale",
        "0.2",
        "--augment",
        "none",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "tuned",
        "--no-export",
    ]
    assert cli.main(argv) == 0
    run = json.loads((tmp_path / "runs" / "tuned" / "run.json").read_text())
    assert run["config"]["backbone_lr_scale"] == 0.2 and run["training"]["epochs_run"] == 2
    assert "--weights" in run["command"] and "--freeze-epochs 1" in run["command"]
    best = keras.models.load_model(tmp_path / "runs" / "tuned" / "best.keras")
    assert type(best.optimizer).__name__ == "FineTuneAdamW" and best.optimizer.backbone_lr_scale == 0.2


def test_fit_packed_takes_the_same_flags(weights_file, folder, tmp_path):
    pack = tmp_path / "tiny.npz"
    assert (
        cli.main(
            [
                "pack",
                "--data",
                str(folder),
                "--image-size",
                str(SIZE),
                "--splits",
                "train",
                "--quality",
                "0",
                "--out",
                str(pack),
            ]
        )
        == 0
    )
    argv = [
        "fit-packed",
        "--no-optimize",  # OpenVINO forms: test_runtimes, and test_fit's resume test
        "--data",
        str(pack),
        "--arch",
        ARCH,
        "--image-size",
        str(SIZE),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--weights",
        str(weights_file),
        "--freeze-epochs",
        "1",
        "--augment",
        "none",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "packed",
        "--workers",
        "1",
    ]
    assert cli.main(argv) == 0
    run = json.loads((tmp_path / "runs" / "packed" / "run.json").read_text())
    assert run["config"]["weights"] == str(weights_file.resolve()) and run["training"]["epochs_run"] == 2
    final = keras.models.load_model(tmp_path / "runs" / "packed" / "best.keras")
    assert final.get_layer(ARCH).get_layer("predictions").kernel.shape == (1024, 3)
