"""``fit-packed --mixed-precision`` on a CPU: bfloat16 compute, MixUp / CutMix in float32."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from training_helpers import make_folder

from training import __main__ as cli
from training.mixing import batch_mixers, mix


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_the_mixers_compute_in_float32_under_a_mixed_policy(bfloat16_policy):
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[np.arange(8) % 3]
    for mixer in batch_mixers(0.2, 1.0, seed=3):  # MixUp, CutMix: both failed on bfloat16 before
        mixed_images, mixed_labels = mix(mixer, images, labels)
        assert keras.backend.standardize_dtype(mixed_images.dtype) == "float32"
        np.testing.assert_allclose(keras.ops.convert_to_numpy(mixed_labels).sum(axis=1), 1.0, rtol=1e-5)


def test_fit_packed_mixed_precision_trains_on_a_cpu(tmp_path):
    folder = make_folder(tmp_path / "images", per_class=8)
    pack = tmp_path / "tiny.npz"
    assert (
        cli.main(
            ["pack", "--data", str(folder), "--image-size", "32", "--splits", "train", "--out", str(pack)]
        )
        == 0
    )
    argv = ["fit-packed", "--data", str(pack), "--arch", "lenet5", "--image-size", "32", "--epochs", "1"]
    argv += ["--batch-size", "6", "--augment", "strong", "--mixed-precision", "--workers", "1"]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--run-name", "mixed"]
    try:
        assert cli.main(argv) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    run = json.loads((tmp_path / "runs" / "mixed" / "run.json").read_text())
    assert run["precision"] == "mixed_bfloat16" and run["training"]["epochs_run"] == 1
    best = keras.models.load_model(Path(tmp_path / "runs" / "mixed" / "best.keras"))
    assert best.dtype_policy.name == "float32"  # exported as float32, like fit's mixed runs
