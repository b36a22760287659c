"""The benchmarks' image sets: real photos as people upload them, the same files for every server.

Every benchmark (the in-process ceiling, the load test against each server) uses the very same
files, so their numbers compare. Three named sets (``--image-set``):

- ``photos`` (the default): the 397 real photos of ``shared/data/photos-varied`` at their original
  sizes (193x130 up to 2592x1944, median 0.19 megapixels, mean 116 KiB; EXIF, progressive JPEGs),
  read in place, never copied;
- ``phone``: phone-camera uploads, 12-megapixel (4032x3024) JPEGs made once from the largest of
  those photos (upscaled, quality 90; every other one carries EXIF orientation 6, "rotate 90°",
  as a phone held upright writes it), cached in ``benchmarks/results/images/`` (gitignored);
- ``thumbnails``: the small set earlier benchmarks used (``ImageMix``): 24 Imagenette photos at
  224x224 plus 8 of them enlarged to 640x480 and 1280x960. Cheap to decode: it hides what real
  uploads cost, keep it for comparisons with older results.

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
PHOTOS_DIR = REPO.parent / "shared" / "data" / "photos-varied"
CACHE_DIR = REPO / "benchmarks" / "results" / "images"
JPEG_QUALITY = 90
IMAGE_SETS = ("photos", "phone", "thumbnails")
DEFAULT_IMAGE_SET = "photos"
PHONE_SIZE = (4032, 3024)  # 12 megapixels, 4:3, as phone cameras write them
PHONE_COUNT = 8
EXIF_ORIENTATION = 0x0112
# Sizes of the synthetic stand-ins for photos-varied (a fresh clone without shared data).
SYNTHETIC_PHOTO_SIZES = ((500, 375), (375, 500), (640, 480), (333, 500), (800, 533), (1024, 768))


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


def image_set(name: str = DEFAULT_IMAGE_SET) -> ImageSet:
    """The named image set (``IMAGE_SETS``); ``ValueError`` for another name."""
    if name == "photos":
        return build_photo_set()
    if name == "phone":
        return build_phone_set()
    if name == "thumbnails":
        return build_image_set(ImageMix())
    raise ValueError(f"unknown image set {name!r}; one of {', '.join(IMAGE_SETS)}")


def add_image_set_argument(parser) -> None:
    """``--image-set`` for a benchmark's command line."""
    parser.add_argument(
        "--image-set",
        choices=IMAGE_SETS,
        default=DEFAULT_IMAGE_SET,
        help="the uploads (benchmarks.images): real photos of varied sizes (default), 12 MP phone "
        "JPEGs, or the small 224 px set of older results",
    )


def build_photo_set(photos_dir: Path = PHOTOS_DIR, cache_dir: Path = CACHE_DIR) -> ImageSet:
    """Every photo of ``photos_dir`` as it is (or synthetic photos of varied sizes without it)."""
    paths = sorted(photos_dir.glob("*/*.jp*g")) if photos_dir.is_dir() else []
    if paths:
        origin = f"real photos from {photos_dir}"
    else:
        mix = ImageMix(cache_dir=cache_dir)
        paths = [p for size in SYNTHETIC_PHOTO_SIZES for p in _synthetic(mix, 4, size, "photo")]
        origin = "synthetic JPEGs (shared data folder absent)"
    return _described(paths, f"photos at their original sizes; {origin}")


def build_phone_set(
    photos_dir: Path = PHOTOS_DIR, cache_dir: Path = CACHE_DIR, count: int = PHONE_COUNT
) -> ImageSet:
    """``count`` 12 MP JPEGs upscaled from the largest photos (every other one EXIF-rotated)."""
    sources = sorted(photos_dir.glob("*/*.jp*g")) if photos_dir.is_dir() else []
    if sources:
        by_size = sorted(sources, key=lambda path: (-_pixels(path), path.name))
        sources, origin = by_size[:count], f"upscaled from the largest photos of {photos_dir}"
    else:
        sources = _synthetic(ImageMix(cache_dir=cache_dir), count, (1024, 768), "phone-source")
        origin = "upscaled synthetic JPEGs (shared data folder absent)"
    paths = [
        _enlarged(source, PHONE_SIZE, cache_dir, orientation=6 if index % 2 else None)
        for index, source in enumerate(sources)
    ]
    return _described(paths, f"{PHONE_SIZE[0]}x{PHONE_SIZE[1]} phone JPEGs, {origin}")


def _pixels(path: Path) -> int:
    with Image.open(path) as image:
        return image.width * image.height


def _described(paths: list[Path], what: str) -> ImageSet:
    sizes = tuple(_size(path) for path in paths)
    total = sum(path.stat().st_size for path in paths)
    by_area = sorted(sizes, key=lambda size: size[0] * size[1])
    (w0, h0), (w1, h1), (wm, hm) = by_area[0], by_area[-1], by_area[len(by_area) // 2]
    description = (
        f"{len(paths)} JPEGs, {what}; {w0}x{h0} to {w1}x{h1}, median {wm * hm / 1e6:.2f} MP, "
        f"mean {total / len(paths) / 1024:.0f} KiB"
    )
    return ImageSet(tuple(paths), description, sizes)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def build_image_set(mix: ImageMix = ImageMix()) -> ImageSet:
    """The ``thumbnails`` set: sampled real photos (or synthetic ones), then the enlarged copies."""
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


def _enlarged(source: Path, size: tuple[int, int], cache_dir: Path, orientation: int | None = None) -> Path:
    """``source`` resized to ``size`` as JPEG (cached); with ``orientation``, that EXIF tag too."""
    width, height = size
    tag = f"-exif{orientation}" if orientation else ""
    path = cache_dir / f"{source.stem}-{width}x{height}{tag}.jpg"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            enlarged = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        exif = Image.Exif()
        if orientation:
            exif[EXIF_ORIENTATION] = orientation
        _save_jpeg(enlarged, path, exif=exif)
    return path


def _save_jpeg(image: Image.Image, path: Path, exif: Image.Exif | None = None) -> None:
    """Write beside the target and rename, so concurrent runs never read a half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    extra = {"exif": exif.tobytes()} if exif else {}
    image.save(partial, format="JPEG", quality=JPEG_QUALITY, **extra)
    partial.replace(path)


def _size_range(sizes) -> str:
    distinct = sorted({f"{w}x{h}" for w, h in sizes})
    return (
        distinct[0]
        if len(distinct) == 1
        else f"({', '.join(distinct[:3])}{'...' if len(distinct) > 3 else ''})"
    )
