"""service.serving.images: every format and mode users send decodes to upright RGB; bad uploads are refused.

All files are generated here (``tests/service_files.py``) and decoded in-process (no server).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import service_files as files

from service.config import Limits
from service.serving import images
from service.serving.images import InvalidImage, Resize, crop_box, decode, open_upload, prepare_image

REPO = Path(__file__).resolve().parents[1]
VALID = files.valid_files()
REFUSED = files.refused_files()


def decode_image(data: bytes, name: str, limits: Limits = Limits()) -> np.ndarray:
    """``service.serving.images.decode`` as an array."""
    return np.asarray(decode(data, name, limits))


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_valid_file_decodes_to_rgb(name):
    data, expected_size = VALID[name]
    image = decode_image(data, name)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == expected_size


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_files_raise_invalid_image_naming_the_file(name):
    data, reason_part = REFUSED[name]
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, name, Limits(max_file_bytes=2 * 1024 * 1024))
    assert caught.value.filename == name
    assert reason_part in caught.value.reason


def test_mode_conversions_keep_the_colours():
    """Each mode's pixels map to the RGB a viewer shows (gray replicated, alpha on white, ...)."""
    gray = decode_image(files.encode(files.solid("L", (8, 8), 100), "PNG"), "gray.png")
    assert (gray == 100).all()
    sixteen = decode_image(files.sixteen_bit_gray_png(8, 8, 65535), "white16.png")
    assert (sixteen == 255).all()
    sixteen_rgb = decode_image(files.sixteen_bit_rgb_png(8, 8, (65535, 0, 32896)), "rgb16.png")
    assert (sixteen_rgb == [255, 0, 128]).all()
    transparent = decode_image(files.encode(files.solid("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), "t.png")
    assert (transparent == 255).all()  # fully transparent -> the white background
    cmyk = decode_image(files.encode(files.solid("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), "c.jpg")
    assert abs(cmyk[..., 0].astype(int) - 255).max() <= 3 and cmyk[..., 1:].max() <= 3  # red


def test_exif_orientation_is_applied():
    upright = files.photo((60, 40))  # 60 wide, 40 high
    rotated = files.exif_rotated_jpeg(upright)  # stored 40 wide, 60 high, tag 6 says "rotate"
    decoded = decode_image(rotated, "phone.jpg")
    assert decoded.shape[:2] == (40, 60)
    reference = decode_image(files.encode(upright, "JPEG", quality=95), "upright.jpg")
    assert np.abs(decoded.astype(int) - reference.astype(int)).mean() < 3


def test_gif_uses_the_first_frame():
    decoded = decode_image(files.animated_gif(), "anim.gif")
    assert decoded[..., 0].mean() > 200 and decoded[..., 2].mean() < 50  # frame 1 is red


def test_bomb_is_refused_before_decoding():
    """The header alone decides: a 50000x50000 claim in a few hundred bytes never allocates."""
    bomb = files.png_bomb(50_000, 50_000)
    assert len(bomb) < 1000
    with pytest.raises(InvalidImage, match="pixels"):
        decode_image(bomb, "bomb.png")


@pytest.mark.parametrize("height,width", [(40, 60), (60, 40), (1, 1), (300, 300), (3000, 4000)])
def test_crop_box_matches_keras_resizing(height, width):
    """The center crop mirrors keras' ``crop_to_aspect_ratio`` arithmetic."""
    resize = Resize(48, 32)
    left, top, right, bottom = crop_box(height, width, resize)
    crop_height = max(min(height, int(width * 48 / 32)), 1)
    crop_width = max(min(width, int(height * 32 / 48)), 1)
    assert (right - left, bottom - top) == (crop_width, crop_height)
    assert (top, left) == ((height - crop_height) // 2, (width - crop_width) // 2)


@pytest.mark.parametrize(
    "size,target",
    [
        ((400, 300), (48, 32)),
        ((4000, 3000), (224, 224)),
        ((96, 72), (64, 64)),
        ((1, 1), (32, 32)),
    ],
)
def test_prepare_image_matches_the_keras_resizing_layer(size, target):
    """PIL's antialiased bilinear resize tracks the model's own ``Resizing`` layer.

    Measured: mean difference 0.15-0.25 gray levels, 99th percentile below 1; single pixels on hard
    edges differ by up to ~20 (the two filters treat borders slightly differently). Upscaling tiny
    images differs more at hard edges (mean 0.6 for 20x15 -> 64x64), which is why the service
    tests compare probabilities with a tolerance.
    """
    import keras

    data = files.encode(files.photo(size), "PNG")
    layer = keras.layers.Resizing(
        *target, interpolation="bilinear", crop_to_aspect_ratio=True, antialias=True
    )
    expected = np.asarray(layer(decode_image(data, "p.png")[None].astype("float32")))[0]
    ours = prepare_image(data, "p.png", Resize(*target)).astype("float32")
    assert ours.shape == (*target, 3)
    difference = np.abs(ours - expected)
    assert difference.mean() < 0.5
    assert np.percentile(difference, 99) < 1.5


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_valid_file_prepares_to_the_model_size(name):
    """``prepare_image`` takes the libjpeg-turbo path for plain JPEGs and PIL for the rest: every
    file ends up as the same model-ready array."""
    data, _ = VALID[name]
    image = prepare_image(data, name, Resize(64, 64))
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_files_are_refused_by_prepare_image_too(name):
    """A JPEG that libjpeg-turbo refuses goes to PIL, which gives the reason."""
    data, reason_part = REFUSED[name]
    with pytest.raises(InvalidImage) as caught:
        prepare_image(data, name, Resize(64, 64), Limits(max_file_bytes=2 * 1024 * 1024))
    assert caught.value.filename == name
    assert reason_part in caught.value.reason


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (1280, 960), (100, 90)])
def test_reduced_scale_jpeg_decoding_matches_full_decoding(size):
    """Decoding a JPEG at n/8 scale (224 -> 140, 640x480 -> 240x180, 1280x960 -> 320x240) and
    resizing the rest of the way gives the pixels of a full decode and resize, within what JPEG
    itself loses. Measured on the default model: held-out top-1 85.0 % either way."""
    from PIL import Image

    data = files.encode(files.photo(size, seed=3), "JPEG", quality=90)
    ours = prepare_image(data, "p.jpg", Resize(128, 128)).astype(float)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    box = crop_box(full.height, full.width, Resize(128, 128))
    reference = np.asarray(full.resize((128, 128), Image.Resampling.BILINEAR, box=box)).astype(float)
    assert np.abs(ours - reference).mean() < 2.0


def test_reduced_scale_keeps_gray_and_orientation():
    gray = prepare_image(files.encode(files.photo((300, 200)).convert("L"), "JPEG"), "g.jpg", Resize(64, 64))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    upright = files.photo((400, 200))  # wide
    rotated = prepare_image(files.exif_rotated_jpeg(upright), "phone.jpg", Resize(32, 64))
    reference = prepare_image(files.encode(upright, "JPEG", quality=95), "u.jpg", Resize(32, 64))
    assert np.abs(rotated.astype(int) - reference.astype(int)).mean() < 3


def upload_cost(data: bytes, resize, limits=None) -> int:
    """``open_upload``'s decoding cost of ``data`` (the image it opened, closed)."""
    cost, image = open_upload(data, resize, limits or Limits())
    if image is not None:
        image.close()
    return cost


def _peak_script(code: str) -> str:
    """A script that prints how much its peak memory (VmHWM: its own, where ru_maxrss would include
    its parent's) grows, in MiB, while it runs ``code``, which may use ``data``, the bytes of the
    file named by its argument."""
    return (
        "import re, sys\n"
        "from pathlib import Path\n"
        "from service.serving.images import Resize, decode, prepare_image\n"
        "from service.config import Limits\n"
        "from PIL import Image, ImageOps, TiffImagePlugin\n"
        "Image.init()  # the plugins imported before measuring: decoding, not module imports\n"
        "def peak():\n"
        "    status = Path('/proc/self/status').read_text()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) / 1024\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = peak()\n"
        f"{code}\n"
        "print(peak() - before)\n"
    )


LARGE_IMAGES = {
    "gray16": lambda: files.sixteen_bit_gray_png(6000, 6000, value=0),
    "rgba": lambda: files.encode(files.solid("RGBA", (6000, 6000), (1, 2, 3, 4)), "PNG"),
    "gray_alpha": lambda: files.encode(files.solid("LA", (6000, 6000), (1, 2)), "PNG"),
    "rgb": lambda: files.encode(files.solid("RGB", (6000, 6000), (1, 2, 3)), "PNG"),
    "phone_rotated_jpeg": lambda: files.exif_rotated_jpeg(files.photo((3000, 4000), seed=5)),
    "gray": lambda: files.encode(files.solid("L", (6000, 6000), 7), "PNG"),
}


@pytest.mark.parametrize("name", sorted(LARGE_IMAGES))
def test_decode_cost_covers_the_memory_decoding_really_takes(name, tmp_path):
    """The decode budget counts what decoding holds (16-bit, alpha), not pixels alone: the
    estimate is at least the measured peak, and not far above it."""
    import subprocess
    import sys

    path = tmp_path / f"{name}.png"
    path.write_bytes(LARGE_IMAGES[name]())
    script = _peak_script("prepare_image(data, 'x', Resize(64, 64), Limits(max_file_bytes=1 << 30))")
    measured_mib = float(
        subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
    )
    estimate_mib = upload_cost(path.read_bytes(), Resize(64, 64), Limits(max_file_bytes=1 << 30)) / 2**20
    assert measured_mib <= estimate_mib * 1.05 + 2, (measured_mib, estimate_mib)
    assert estimate_mib <= measured_mib * 1.6 + 8, (measured_mib, estimate_mib)


def test_decode_cost_counts_a_scaled_jpeg_at_its_decoded_size():
    photo = files.encode(files.photo((4000, 3000), seed=2), "JPEG", quality=85)
    width, height = images._jpeg_scaled_size(4000, 3000, 128)
    assert (width, height) == (500, 375)
    assert upload_cost(photo, Resize(128, 128)) == width * height * 7
    assert upload_cost(b"not an image", Resize(128, 128)) == 0
    bomb = files.png_bomb(50_000, 50_000)  # refused by the pixel limit (400) before any budget
    assert upload_cost(bomb, Resize(128, 128)) == 0


def test_a_lone_phone_jpeg_may_decode_on_the_event_loop_a_large_png_may_not():
    """``core.QUICK_DECODE_BYTES`` (``Batcher(at_once=True)``): a 12 MP JPEG, which libjpeg shrinks
    while decoding (EXIF-rotated too: PIL's draft), is quick; a 4 MP PNG, decoded at full size,
    goes to the model's thread."""
    from service.serving.dataplane import QUICK_DECODE_BYTES

    phone = files.encode(files.photo((4000, 3000), seed=3), "JPEG", quality=85)
    rotated = files.exif_rotated_jpeg(files.photo((3000, 4000), seed=3))  # PIL decodes it at 1/8
    png = files.encode(files.photo((2000, 2000), seed=3), "PNG")
    assert upload_cost(phone, Resize(128, 128)) <= QUICK_DECODE_BYTES < upload_cost(png, Resize(128, 128))
    assert upload_cost(rotated, Resize(128, 128)) == 500 * 375 * (5 + 5)  # the draft, and its upright copy


def test_sixteen_bit_values_scale_exactly_as_before():
    """The banded conversion gives the values of the one-shot formula (65535 -> 255, rounded)."""
    ramp = files.sixteen_bit_gray_png(65536 // 64, 600)
    values = np.linspace(0, 65535, 65536 // 64).astype(np.uint32)
    expected = ((values * 255 + 32767) // 65535).astype(np.uint8)
    decoded = decode_image(ramp, "ramp16.png")
    assert (decoded[:, :, 0] == expected).all() and (decoded[:, :, 2] == expected).all()
