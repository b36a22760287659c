"""``python -m training fit``: a tiny model trained end to end, killed mid-epoch and resumed."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from training_helpers import make_folder, read_log, run_cli

from training import __main__ as cli
from training import fit, kit, runs
from training.cli import command_line
from training.data import decode_and_resize, split_folder
from training.portable import portable_command
from training.recipe import Recipe, parse_options

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    return parser.parse_args(list(argv))


def config_of(args: argparse.Namespace) -> dict:
    """run.json's ``config`` for parsed fit flags."""
    return Recipe.from_args(args).config()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=16)  # 36 / 6 / 6 images


def test_fit_trains_evaluates_and_records_the_run(folder, tmp_path):
    argv = [
        "fit",
        "--no-optimize",  # OpenVINO forms: test_runtimes, and test_fit's resume test
        "--arch",
        "lenet5",
        "--data",
        str(folder),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--warmup-epochs",
        "1",
        "--label-smoothing",
        "0.1",
        "--augment",
        "strong",
        "--cutmix",
        "0",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--no-export",
    ]
    assert cli.main(argv) == 0
    run_dir = tmp_path / "runs" / f"lenet5_{folder.name}_32px"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["arch"] == "lenet5" and run["name"] == "lenet5"
    assert run["labels"] == ["tench", "English springer", "parachute"]
    assert run["image_size"] == [32, 32] and run["dataset"] == folder.name
    assert run["splits"] == {"train": 36, "validation": 6, "test": 6}
    assert run["command"].startswith("python -m training fit --arch lenet5 --data ")
    assert "--augment strong --cutmix 0.0" in run["command"]
    assert run["config"]["augmentation"]["mixup"] == 0.2 and run["config"]["augmentation"]["cutmix"] == 0
    assert run["training"]["epochs_run"] == 2 and run["training"]["images_per_second"] > 0
    log = read_log(run_dir)
    assert [row["epoch"] for row in log] == ["0", "1"]
    # One warm-up epoch (5 steps) to the peak, then cosine decay to 0 at the end.
    np.testing.assert_allclose([float(row["learning_rate"]) for row in log], [3e-3, 0.0], atol=1e-7)
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (run_dir / "backup").exists()
    best = keras.models.load_model(run_dir / "best.keras")
    probabilities = best.predict(np.zeros((1, 50, 40, 3), "uint8"), verbose=0)
    assert probabilities.shape == (1, 3)
    # The recorded test top-1 is the checkpoint's on the held-out split, recomputed here.
    test = split_folder(folder).files["test"]
    images = np.stack([decode_and_resize(tf.io.read_file(path), (32, 32)).numpy() for path, _ in test])
    answers = best.predict(images, verbose=0).argmax(axis=1)
    assert run["metrics"]["top1"] == pytest.approx(np.mean(answers == [label for _, label in test]))
    # The finished run is never overwritten.
    assert cli.main(argv) == 2


def test_killed_mid_epoch_then_the_same_command_resumes(folder, tmp_path):
    argv = [
        "fit",
        "--arch",
        "lenet5",
        "--data",
        str(folder),
        "--image-size",
        "32",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--augment",
        "light",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "resume",
        "--models-dir",
        str(tmp_path / "models"),
    ]
    run_dir = tmp_path / "runs" / "resume"

    killed = run_cli(argv, crash_at="2:3")  # dies after batch 3 of epoch 2
    assert killed.returncode == 75, killed.stderr[-2000:]
    assert "Epoch 2/3" in killed.stdout
    assert [row["epoch"] for row in read_log(run_dir)] == ["0"]
    assert json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 1

    resumed = run_cli(argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the unfinished run" in resumed.stdout
    assert "Epoch 1/3" not in resumed.stdout and "Epoch 2/3" in resumed.stdout
    log = read_log(run_dir)
    assert [row["epoch"] for row in log] == ["0", "1", "2"]
    # The learning-rate schedule went on where it stopped: cosine over 3 epochs of 5 steps.
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * step / 15)) for step in (5, 10, 15)]
    np.testing.assert_allclose([float(row["learning_rate"]) for row in log], expected, atol=1e-7)

    run = json.loads((run_dir / "run.json").read_text())
    assert run["training"]["first_epoch"] == 2 and run["training"]["epochs_run"] == 2
    assert run["metrics"]["top1"] >= 0 and not (run_dir / "backup").exists()
    assert run["export"].endswith("lenet5/1")
    metadata = json.loads((Path(run["export"]) / "metadata.json").read_text())
    assert metadata["labels"] == run["labels"] and metadata["command"] == portable_command(run["command"])
    assert str(tmp_path) not in metadata["command"]  # no folder of this machine in shipped metadata
    assert metadata["metrics"]["top1"] == pytest.approx(run["metrics"]["top1"])
    # and its OpenVINO forms, measured on the same test split (python -m training optimize)
    entries = metadata["runtimes"]
    assert entries["tensorflow"]["test"]["images"] == run["splits"]["test"]
    assert entries["tensorflow"]["test"]["top1"] == pytest.approx(run["metrics"]["top1"], abs=1e-6)
    assert (Path(run["export"]) / entries["openvino-int8"]["path"] / "model.xml").is_file()


def test_an_unfinished_run_with_another_configuration_is_refused(tmp_path):
    args = parse("--arch", "lenet5", "--data", str(tmp_path), "--run-name", "r", "--epochs", "3")
    config = config_of(args)
    run_dir = tmp_path / "r"
    unfinished = {"config": config, "command": "python -m training fit ...", "metrics": None}
    runs.write_json(run_dir / "run.json", unfinished)
    runs.write_json(run_dir / "backup" / "training_metadata.json", {"epoch": 1, "batch": 0})
    assert runs.check_run_dir(run_dir, config) is True
    changed = config_of(
        parse("--arch", "lenet5", "--data", str(tmp_path), "--run-name", "r", "--epochs", "5")
    )
    with pytest.raises(runs.RunStateError, match="differs in: epochs"):
        runs.check_run_dir(run_dir, changed)
    assert runs.check_run_dir(tmp_path / "new", config) is False


def test_run_config_defaults_and_options(tmp_path):
    config = config_of(
        parse(
            "--arch",
            "mobilenet_v2",
            "--data",
            str(tmp_path / "flowers"),
            "--width",
            "0.5",
            "--arch-option",
            "dropout=0.3",
            "--arch-option",
            "block=basic",
            "--batch-size",
            "512",
            "--lr",
            "0.1",
            "--scale-lr",
            "--optimizer",
            "sgd",
        )
    )
    assert config["run_name"] == "mobilenet_v2_flowers_224px" and config["image_size"] == [224, 224]
    assert config["arch_options"] == {"dropout": 0.3, "block": "basic", "width": 0.5}
    assert config["learning_rate"] == pytest.approx(0.2) and config["weight_decay"] is None
    assert config_of(parse("--arch", "resnet18", "--data", "x"))["weight_decay"] == 0.05  # adamw
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["width"])


def test_optimizers_and_schedule():
    config = {"optimizer": "sgd", "learning_rate": 0.4, "weight_decay": 1e-4}
    config |= {"epochs": 10, "warmup_epochs": 2}
    sgd = kit.make_optimizer(config, steps_per_epoch=100)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9
    schedule = kit.learning_rate_schedule(config, steps_per_epoch=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(100)) == pytest.approx(0.2)  # half-way through the warm-up
    assert float(schedule(200)) == pytest.approx(0.4)  # peak
    assert float(schedule(600)) == pytest.approx(0.2)  # half-way through the cosine
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-7)
    for name, cls in (
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
        ("rmsprop", keras.optimizers.RMSprop),
    ):
        assert isinstance(kit.make_optimizer({**config, "optimizer": name}, 100), cls)


def test_command_rebuilt_when_not_run_from_the_cli():
    args = parse("--arch", "resnet18", "--data", "imagenette", "--mixed-precision", "--arch-option", "a=1")
    assert command_line("fit", Recipe.from_args(args).to_argv()) == (
        "python -m training fit --arch resnet18 --data imagenette --arch-option a=1 --mixed-precision"
    )


@pytest.mark.slow
def test_fit_on_the_real_imagenette_folder(shared_imagenette, tmp_path):
    argv = [
        "fit",
        "--arch",
        "mobilenet_v3_small",
        "--data",
        str(shared_imagenette),
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--limit",
        "256",
        "--runs-dir",
        str(tmp_path),
        "--no-export",
    ]
    assert cli.main(argv) == 0
    run = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert run["labels"][0] == "tench" and len(run["labels"]) == 10
    assert run["splits"] == {"train": 256, "validation": 256, "test": 256}


def test_mixed_precision_models_are_exported_as_float32():
    config = config_of(parse("--arch", "lenet5", "--data", "x", "--image-size", "32"))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = runs.build_model(config, num_classes=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    exported = runs.float32_model(mixed, config, num_classes=3)
    assert mixed.dtype_policy.name == "mixed_float16" and exported.dtype_policy.name == "float32"
    assert {layer.compute_dtype for layer in exported._flatten_layers()} == {"float32"}
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    for ours, theirs in zip(exported.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(exported(images), mixed(images), atol=1e-3)  # shallow: float16 ~ float32
    assert runs.float32_model(exported, config, num_classes=3) is exported
