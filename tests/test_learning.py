"""A model must actually learn: LeNet-5 through the real ``python -m training fit`` on a generated,
separable 3-class image task (which colour channel carries a textured pattern), scored on held-out
images of its own seeded split. Fails if the data pipeline, labels, loss, optimizer or evaluation
break in a way that still runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from training.__main__ import main as cli

CLASSES = ("red", "green", "blue")


def write_task(root: Path, per_class: int = 60, size: int = 32, seed: int = 0) -> None:
    """Class c: a random blob texture in channel c over a noisy grey background."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.normal(110, 25, (size, size, 3))
            y, x = np.mgrid[0:size, 0:size]
            for _ in range(3):
                cy, cx, r = rng.uniform(4, size - 4, 2).tolist() + [rng.uniform(3, 8)]
                image[..., label] += 90 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")


def test_a_small_model_learns_a_separable_task_on_held_out_images(tmp_path):
    write_task(tmp_path / "data")
    argv = [
        "fit",
        "--no-optimize",  # OpenVINO forms: test_runtimes, and test_fit's resume test
        "--arch",
        "lenet5",
        "--data",
        str(tmp_path / "data"),
        "--image-size",
        "32",
        "--epochs",
        "12",
        "--batch-size",
        "16",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--augment",
        "none",
        "--patience",
        "0",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "learn",
        "--no-export",
    ]
    assert cli(argv) == 0
    run = json.loads((tmp_path / "runs" / "learn" / "run.json").read_text())
    assert run["splits"]["test"] == 27  # 15 % of 60 per class, never trained on
    assert run["metrics"]["top1"] >= 0.9, run["metrics"]
