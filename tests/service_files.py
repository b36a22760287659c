"""Real image files of every kind users upload, generated in memory for the service tests.

``valid_files()`` maps a filename to ``(bytes, (height, width) after EXIF rotation)``;
``refused_files()`` maps a filename to ``(bytes, words the refusal reason must contain)``.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image

MiB = 1024 * 1024


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB picture (gradients and discs) of ``size`` = (width, height)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= max(height - 1, 1)
    x /= max(width - 1, 1)
    channels = [np.sin(x * rng.uniform(1, 6) + y * rng.uniform(1, 6) + rng.uniform(0, 6)) for _ in range(3)]
    picture = (np.stack(channels, axis=-1) + 1) * 110
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
        disc = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        picture[disc] = rng.uniform(0, 255, size=3)
    return Image.fromarray(picture.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def solid(mode: str, size: tuple[int, int], color) -> Image.Image:
    return Image.new(mode, size, color)


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG file from its IHDR fields and raw (filtered) scanlines, written by hand."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def sixteen_bit_gray_png(width: int, height: int, value: int | None = None) -> bytes:
    """A 16-bit grayscale PNG: a constant ``value``, else a horizontal 0..65535 ramp."""
    ramp = np.linspace(0, 65535, width)
    row = (ramp if value is None else np.full(width, value)).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for _ in range(height))
    return _png(width, height, 16, 0, raw)


def sixteen_bit_rgb_png(width: int, height: int, color: tuple[int, int, int] | None = None) -> bytes:
    """A 16-bit-per-channel RGB PNG (which PIL cannot write): constant ``color`` or a photo."""
    if color is None:
        pixels = np.asarray(photo((width, height), seed=3)).astype(">u2") * 257
    else:
        pixels = np.broadcast_to(np.array(color, dtype=">u2"), (height, width, 3))
    raw = b"".join(b"\x00" + np.ascontiguousarray(row).tobytes() for row in pixels)
    return _png(width, height, 16, 2, raw)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    return _png(width, height, 8, 2, b"\x00" * 64)


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """What a phone writes: pixels stored rotated, EXIF orientation 6 ("rotate 90 CW to view")."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    """Two frames: red, then blue; only the first counts."""
    frames = [solid("RGB", (32, 24), (255, 0, 0)), solid("RGB", (32, 24), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@functools.cache
def valid_files() -> dict[str, tuple[bytes, tuple[int, int]]]:
    base = photo((96, 72), seed=1)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    files = {
        "rgb.jpg": encode(base, "JPEG", quality=95),
        "rgb.png": encode(base, "PNG"),
        "rgb.webp": encode(base, "WEBP", quality=95),
        "rgb.bmp": encode(base, "BMP"),
        "anim.gif": animated_gif(),
        "gray.jpg": encode(base.convert("L"), "JPEG", quality=95),
        "gray.png": encode(base.convert("L"), "PNG"),
        "bilevel.png": encode(base.convert("1"), "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "gray_alpha.png": encode(rgba.convert("LA"), "PNG"),
        "palette.png": encode(palette, "PNG"),
        "palette_transparent.png": encode(transparent_palette, "PNG", transparency=0),
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG", quality=95),
        "gray16.png": sixteen_bit_gray_png(96, 72),
        "rgb16.png": sixteen_bit_rgb_png(96, 72),
        "tiny_1x1.png": encode(solid("RGB", (1, 1), (200, 30, 60)), "PNG"),
        "large_4000x3000.jpg": encode(photo((4000, 3000), seed=2), "JPEG", quality=85),
        "phone_exif.jpg": exif_rotated_jpeg(base),
    }
    sizes = {name: (72, 96) for name in files}
    sizes.update({"anim.gif": (24, 32), "tiny_1x1.png": (1, 1), "large_4000x3000.jpg": (3000, 4000)})
    return {name: (data, sizes[name]) for name, data in files.items()}


@functools.cache
def refused_files() -> dict[str, tuple[bytes, str]]:
    """Expects a per-file limit of 2 MiB (``Limits(max_file_bytes=2 * MiB)``)."""
    jpeg = encode(photo((96, 72), seed=1), "JPEG", quality=95)
    rng = np.random.default_rng(7)
    return {
        "empty.jpg": (b"", "empty"),
        "random.bin": (rng.bytes(4096), "not an image"),
        "notes.jpg": (b"These are my holiday notes, not a photo.\n" * 20, "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "cannot be decoded"),
        "bomb.png": (png_bomb(50_000, 50_000), "pixels"),
        "oversized.jpg": (jpeg + rng.bytes(3 * MiB), "bytes"),
        "scan.tiff": (encode(photo((32, 32)), "TIFF"), "not an image"),
    }


BOUNDARY = "XB"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body from (field name, filename or None, content)."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


# -------------------------------------------- random multipart bodies for the fuzz tests

FUZZ_BOUNDARY = "fuzzboundary"
"""The boundary of the fuzzed bodies (tests/test_fuzz.py in process, tests/test_reliability.py over
HTTP)."""


def fuzz_multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A body from (Content-Disposition value, content) pairs."""
    body = b"".join(
        b"--"
        + FUZZ_BOUNDARY.encode()
        + b"\r\nContent-Disposition: "
        + disposition
        + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
        + content
        + b"\r\n"
        for disposition, content in parts
    )
    return body + b"--" + FUZZ_BOUNDARY.encode() + b"--\r\n"


fuzz_dispositions = st.one_of(
    st.just(b'form-data; name="images"; filename="a.jpg"'),
    st.just(b'form-data; name="images"'),
    st.just(b'form-data; name="other"; filename="b.png"'),
    st.just(b"form-data"),
    st.binary(max_size=80),
)
fuzz_bodies = st.one_of(
    st.binary(max_size=2048),
    st.lists(st.tuples(fuzz_dispositions, st.binary(max_size=512)), max_size=4).map(fuzz_multipart),
    st.tuples(
        st.lists(st.tuples(fuzz_dispositions, st.binary(max_size=512)), min_size=1, max_size=3),
        st.integers(0, 10_000),
        st.binary(max_size=16),
    ).map(lambda t: splice(fuzz_multipart(t[0]), t[1], t[2])),
)


def splice(body: bytes, at: int, junk: bytes) -> bytes:
    at %= len(body) + 1
    return body[:at] + junk + body[at + len(junk) :]
