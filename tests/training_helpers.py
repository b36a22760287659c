"""What the training test modules share: a small class-folder dataset and ``python -m training`` in
a fresh process (tests/helpers.py holds the serving side)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("n01440764", "n02102040", "n03888257")  # tench, English springer, parachute
PER_CLASS = 20


def make_folder(root: Path, classes=CLASSES, per_class: int = PER_CLASS) -> Path:
    """JPEGs of varied sizes per class, plus a grayscale, a palette and an RGBA PNG."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class - 1):
            pixels = rng.integers(0, 256, (20 + i, 30 - i % 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"img_{i:03d}.jpg")
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / classes[0] / "gray.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).convert("P").save(
        root / classes[1] / "palette.png"
    )
    Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)).save(root / classes[2] / "rgba.png")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


CRASHING = Path(__file__).with_name("crashing_training.py")


def run_cli(
    argv: list[str], env: dict | None = None, crash_at: str | None = None
) -> subprocess.CompletedProcess:
    """``python -m training ...`` in a fresh process (so it can be killed for real); ``crash_at``
    ("EPOCH:BATCH"): through ``tests/crashing_training.py``, which dies there."""
    command = [sys.executable, str(CRASHING), crash_at] if crash_at else [sys.executable, "-m", "training"]
    return subprocess.run(
        [*command, *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
