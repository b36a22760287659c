"""The benchmark's image set: real JPEGs, a fixed seeded sample, in a mix of sizes.

Every benchmark (the in-process ceiling, the load test against each server) uses the very same
files, so their numbers compare. The mix is plain data (``ImageMix``):

- ``native`` photos drawn with a fixed seed from ``shared/data/imagenette2-train`` (224x224 JPEGs
  as they are, read in place, never copied);
- ``resized``: a few of those photos enlarged to camera-like sizes (640x480, 1280x960) and written
  once as JPEG into ``benchmarks/results/images/`` (gitignored), so decoding cost varies as it does
  with real uploads.

Without the shared data folder (a fresh clone), smooth synthetic photos of the same sizes are
generated instead, and the description says so. PIL only: no TensorFlow, so the Locust process
may import this module too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "imagenette2-train"
CACHE_DIR = REPO / "benchmarks" / "results" / "images"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class ImageMix:
    """How many images of which size; ``resized`` entries are (width, height, count)."""

    native: int = 24
    resized: tuple[tuple[int, int, int], ...] = ((640, 480, 6), (1280, 960, 2))
    seed: int = 0
    data_dir: Path = SHARED_DATA
    cache_dir: Path = CACHE_DIR


@dataclass(frozen=True)
class ImageSet:
    paths: tuple[Path, ...]
    description: str
    sizes: tuple[tuple[int, int], ...] = field(repr=False)

    def read_all(self) -> list[bytes]:
        return [path.read_bytes() for path in self.paths]


def build_image_set(mix: ImageMix = ImageMix()) -> ImageSet:
    """The files of ``mix``: sampled real photos (or synthetic ones), then the enlarged copies."""
    if mix.native < 1:
        raise ValueError("the image mix needs at least one native image")
    real = mix.data_dir.is_dir()
    natives = _sample_real(mix) if real else _synthetic(mix, mix.native, (224, 224), "native")
    paths = list(natives)
    for width, height, count in mix.resized:
        for index in range(count):
            source = natives[index % len(natives)]
            paths.append(_enlarged(source, (width, height), mix.cache_dir))
    sizes = tuple(Image.open(path).size for path in paths)
    origin = (
        f"Imagenette photos from {mix.data_dir} (seed {mix.seed})"
        if real
        else ("synthetic JPEGs (shared data folder absent)")
    )
    resized = ", ".join(f"{count} at {w}x{h}" for w, h, count in mix.resized)
    total = sum(path.stat().st_size for path in paths)
    description = (
        f"{len(paths)} JPEGs: {mix.native} native {_size_range(sizes[: mix.native])}"
        f"{' + ' + resized if resized else ''}; {origin}; mean {total / len(paths) / 1024:.0f} KiB"
    )
    return ImageSet(tuple(paths), description, sizes)


def _sample_real(mix: ImageMix) -> list[Path]:
    files = sorted(mix.data_dir.glob("*/*.JPEG"))
    if len(files) < mix.native:
        raise FileNotFoundError(f"{mix.data_dir} holds {len(files)} JPEGs, the mix needs {mix.native}")
    return random.Random(mix.seed).sample(files, mix.native)


def _synthetic(mix: ImageMix, count: int, size: tuple[int, int], tag: str) -> list[Path]:
    """Smooth colour gradients with noise: JPEG-compressible like photos, seeded, cached."""
    mix.cache_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(mix.seed)
    width, height = size
    paths = []
    for index in range(count):
        path = mix.cache_dir / f"synthetic-{tag}-{mix.seed}-{index}-{width}x{height}.jpg"
        if not path.is_file():
            y, x = np.mgrid[0:height, 0:width] / max(width, height)
            phases = rng.uniform(0, 2 * np.pi, size=3)
            channels = [np.sin(6 * x + 4 * y + phase) for phase in phases]
            pixels = np.stack(channels, -1) * 100 + 128 + rng.normal(0, 12, (height, width, 3))
            _save_jpeg(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), path)
        paths.append(path)
    return paths


def _enlarged(source: Path, size: tuple[int, int], cache_dir: Path) -> Path:
    width, height = size
    path = cache_dir / f"{source.stem}-{width}x{height}.jpg"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            enlarged = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        _save_jpeg(enlarged, path)
    return path


def _save_jpeg(image: Image.Image, path: Path) -> None:
    """Write beside the target and rename, so concurrent runs never read a half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="JPEG", quality=JPEG_QUALITY)
    partial.replace(path)


def _size_range(sizes) -> str:
    distinct = sorted({f"{w}x{h}" for w, h in sizes})
    return (
        distinct[0]
        if len(distinct) == 1
        else f"({', '.join(distinct[:3])}{'...' if len(distinct) > 3 else ''})"
    )
