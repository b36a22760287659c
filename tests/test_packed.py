"""Training where TensorFlow is absent: pack -> fit-packed -> evaluate -> export, and the pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from training_helpers import make_folder

from training import __main__ as cli
from training.data import SplitFractions, split_folder
from training.end_to_end import Augmentation
from training.fit_packed import Batches
from training.pack import Pack

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=16)  # 36 / 6 / 6 images


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "tiny.npz"
    argv = [
        "pack",
        "--data",
        str(folder),
        "--image-size",
        "32",
        "--splits",
        "train,validation",
        "--quality",
        "0",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out


def test_pack_holds_fits_split_resized_losslessly(folder, packed):
    pack = Pack(packed)
    split = split_folder(folder, SplitFractions(0.15, 0.15, 0))
    assert pack.splits == ["train", "validation"] and pack.meta["encoding"] == "PNG"
    assert pack.class_ids == split.class_ids
    assert pack.labels == ("tench", "English springer", "parachute")
    for name in ("train", "validation"):
        assert list(pack.labels_of(name)) == [label for _, label in split.files[name]]
    images = pack.images("train")
    assert images.shape == (36, 32, 32, 3) and images.dtype == np.uint8
    # The very pixels of fit's own pipeline (decode, crop-resize, round), stored as PNG.
    from training.data import decode_and_resize

    first = decode_and_resize(tf.io.read_file(split.files["train"][0][0]), (32, 32)).numpy()
    np.testing.assert_array_equal(images[0], first)
    with pytest.raises(KeyError, match="not 'test'"):
        pack.images("test")  # never packed: the training machine never sees it


def test_pack_refuses_unknown_splits(folder, tmp_path, capsys):
    assert (
        cli.main(
            [
                "pack",
                "--data",
                str(folder),
                "--image-size",
                "32",
                "--splits",
                "train,holdout",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 2
    )
    assert "--splits" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def check_mixed(images: np.ndarray, mixed: np.ndarray, mixed_labels: np.ndarray) -> None:
    """Labels sum to 1, and each image's mean pixel is the label-weighted mean of the sources'
    (CutMix weighs labels by the box's exact area, the pixels by whole rows and columns: up to
    one row and one column of a 64x64 image apart, 2/64 of the 250 gray levels between sources)."""
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-5)
    expected = mixed_labels @ images.reshape(len(images), -1).mean(axis=1)
    np.testing.assert_allclose(mixed.reshape(len(images), -1).mean(axis=1), expected, atol=250 * 2 / 64)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_both_trainers_mix_with_the_same_keras_layers(kind):
    """fit-packed's NumPy batches (``Batches``) and fit's tf.data batches (``data.batch_mixer``)
    are mixed by ``training.mixing``: labels in proportion to what each image contributes."""
    import tensorflow as tf

    from training.data import batch_mixer

    values = np.array([0.0, 100.0, 200.0, 50.0, 150.0, 250.0, 25.0, 75.0], np.float32)
    images = np.stack([np.full((64, 64, 3), v, np.float32) for v in values])
    labels = np.arange(8) % 8
    aug = Augmentation(**{kind: 1.0})
    batches = Batches(images.astype(np.uint8), labels, 8, 8, aug, seed=0, workers=1)
    mixed_some = False
    for index in range(len(batches)):
        for epoch in range(6):
            batches.epoch = epoch
            rows = np.sort(batches.order[:8])
            mixed, mixed_labels = batches[index]
            check_mixed(images[rows], mixed, mixed_labels)
            mixed_some |= bool(np.any(mixed_labels.max(axis=1) < 0.999))
    assert mixed_some
    one_hot = tf.one_hot(labels, 8)
    for seed in range(6):
        mixed, mixed_labels = batch_mixer(aug, seed)(tf.constant(images), one_hot)
        check_mixed(images, mixed.numpy(), mixed_labels.numpy())


def test_batches_are_full_shuffled_each_epoch_and_cover_the_split():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=3)
    labels = np.arange(10) % 2
    batches = Batches(images, labels, 2, 4, Augmentation(), seed=0, workers=1)
    assert len(batches) == 2  # 10 images in batches of 4: the remainder is left out
    first = [batches[i][0][:, 0, 0, 0].tolist() for i in range(2)]
    batches.on_epoch_end()
    second = [batches[i][0][:, 0, 0, 0].tolist() for i in range(2)]
    assert first != second and all(len(b) == 4 for b in first + second)
    x, y = batches[0]
    assert x.dtype == np.float32 and y.shape == (4, 2)
    np.testing.assert_array_equal(y.argmax(axis=1), x[:, 0, 0, 0].astype(int) % 2)


def test_fit_packed_then_evaluate_then_export(packed, folder, tmp_path):
    runs, models = tmp_path / "runs", tmp_path / "models"
    argv = [
        "fit-packed",
        "--data",
        str(packed),
        "--arch",
        "lenet5",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--augment",
        "strong",
        "--train-splits",
        "train",
        "--runs-dir",
        str(runs),
        "--run-name",
        "tiny",
        "--name",
        "tiny",
        "--workers",
        "2",
    ]
    assert cli.main(argv) == 0
    run_dir = runs / "tiny"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["metrics"] is None and run["trained_on"] == ["train"] and run["splits"] == {"train": 36}
    assert run["training"]["epochs_run"] == 2 and run["config"]["pack"]["encoding"] == "PNG"
    assert run["command"].startswith("python -m training fit-packed --arch lenet5 --data ")
    assert not (run_dir / "backup").exists()

    assert cli.main(["evaluate", str(run_dir), "--data", str(folder)]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["splits"] == {"train": 36, "validation": 6, "test": 6}
    assert 0 <= run["metrics"]["top1"] <= 1  # recomputed independently below (optimize, after export)
    assert set(run["validation_metrics"]) == {"top1", "top5", "loss"}

    assert cli.main(["export", str(run_dir), "--models-dir", str(models)]) == 0
    metadata = json.loads((models / "tiny" / "1" / "metadata.json").read_text())
    assert metadata["metrics"]["top1"] == run["metrics"]["top1"]
    assert metadata["training"]["epochs_run"] == 2 and metadata["training"]["pack"]["file"] == "tiny.npz"
    # optimized from the data the run names, on the same 6 test images evaluate used
    assert metadata["runtimes"]["openvino-fp32"]["test"]["images"] == 6
    assert metadata["runtimes"]["tensorflow"]["test"]["top1"] == pytest.approx(
        run["metrics"]["top1"], abs=1e-6
    )
    loaded = tf.saved_model.load(str(models / "tiny" / "1"))
    out = loaded.signatures["serving_default"](images=tf.zeros((1, 40, 50, 3), tf.uint8))
    assert out["probabilities"].shape == (1, 3)


def test_fit_packed_refuses_a_pack_split_differently(packed, tmp_path, capsys):
    argv = [
        "fit-packed",
        "--data",
        str(packed),
        "--arch",
        "lenet5",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--seed",
        "1",
        "--runs-dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    assert "--seed 1 (pack: 0)" in capsys.readouterr().err


def module_level_imports(module: str) -> set[str]:
    """Modules imported by ``module``'s top-level statements (not inside functions)."""
    import ast
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "training")
    return found


def test_fit_packed_imports_no_tensorflow():
    """What fit-packed imports at load time never reaches TensorFlow (the GPU machine has JAX only;
    TensorFlow is imported inside the functions fit-packed does not call)."""
    import importlib.util

    seen, todo = set(), ["training.fit_packed"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        imports = module_level_imports(module)
        assert not {m for m in imports if m.split(".")[0] in ("tensorflow", "tensorflow_hub")}, module
        todo.extend(m for m in imports if m.startswith("training") and importlib.util.find_spec(m))
        if module == "training.architectures":  # the package registers every family on import
            family_files = (REPO / "training" / "architectures").glob("*.py")
            todo.extend(f"training.architectures.{p.stem}" for p in family_files)
    assert {"training.kit", "training.end_to_end", "training.pack", "training.architectures.resnet"} <= seen
    assert not {"training.data", "training.export", "training.fit"} & seen


def test_fit_packed_killed_mid_epoch_then_the_same_command_resumes(packed, tmp_path):
    from training_helpers import read_log, run_cli

    argv = [
        "fit-packed",
        "--data",
        str(packed),
        "--arch",
        "lenet5",
        "--image-size",
        "32",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--train-splits",
        "train,validation",
        "--runs-dir",
        str(tmp_path),
        "--run-name",
        "resume",
        "--workers",
        "1",
    ]
    killed = run_cli(argv, crash_at="2:2")  # dies after batch 2 of epoch 2
    assert killed.returncode == 75, killed.stderr[-2000:]
    assert [row["epoch"] for row in read_log(tmp_path / "resume")] == ["0"]

    resumed = run_cli(argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the unfinished run" in resumed.stdout and "Epoch 1/3" not in resumed.stdout
    assert [row["epoch"] for row in read_log(tmp_path / "resume")] == ["0", "1", "2"]
    run = json.loads((tmp_path / "resume" / "run.json").read_text())
    assert run["trained_on"] == ["train", "validation"] and run["splits"] == {"train": 42}
    assert run["training"]["first_epoch"] == 2 and not (tmp_path / "resume" / "backup").exists()


def test_mix_one_is_mixup_below_one_half_and_cutmix_above():
    """``training.mixing.mix_one``: the one choice of MixUp or CutMix, for both trainers."""
    import keras

    from training.mixing import batch_mixers, mix_one

    values = np.array([0.0, 100.0, 200.0, 50.0], np.float32)
    images = np.stack([np.full((16, 16, 3), v, np.float32) for v in values])
    labels = np.eye(4, dtype=np.float32)
    mixers = batch_mixers(1.0, 1.0, seed=3)
    mixup, _ = mix_one(mixers, images, labels, 0.2)
    cutmix, _ = mix_one(mixers, images, labels, 0.7)
    blended = ~np.isin(keras.ops.convert_to_numpy(mixup), values)
    assert blended.any()  # MixUp blends pixels
    assert np.isin(keras.ops.convert_to_numpy(cutmix), values).all()  # CutMix pastes them
