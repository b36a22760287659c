"""Turn uploaded bytes into model-ready RGB arrays, or refuse them with one clear reason.

Pure PIL + numpy (no TensorFlow), so the API processes stay light. Everything that can go wrong
with an upload (empty, not an image, truncated, too many bytes or pixels, odd modes) raises the
single error type ``InvalidImage(filename, reason)``; nothing here ever reaches the model.

Rules:

- Formats: JPEG (also MPO, what many phones write), PNG, WebP, BMP, GIF (first frame).
- The pixel count is checked from the header, before any pixel is decoded, so a decompression
  bomb (a tiny file claiming 50000x50000) never allocates.
- EXIF orientation is applied: a phone photo is classified upright.
- Every mode becomes 8-bit RGB: grayscale is replicated, 16-bit is scaled (65535 -> 255), CMYK is
  converted, transparency (RGBA, LA, PA, palette with a transparent colour) is composited on white.
- ``prepare_image`` then center-crops to the model's aspect ratio and resizes with the filter the
  model's own ``Resizing`` layer uses (``metadata.json`` "preprocessing"), so requests of any size
  stack into one batch and the model's resize becomes an identity. A JPEG (RGB or grayscale, no
  EXIF rotation) is decoded by libjpeg-turbo through ``simplejpeg`` directly at the smallest
  scale n/8 (DCT scaling) that keeps both sides at least the model's input size: a 224x224 photo
  for a 128x128 model decodes at 140x140, a 1280x960 one at 320x240, several times faster than
  decoding every pixel and resizing them all (benchmarks/README.md, "What we tried"; the held-out
  accuracy of the default model is unchanged). Every other image, and any JPEG that libjpeg-turbo
  refuses, goes through PIL, which says what is wrong with it; PIL too decodes a JPEG (an
  EXIF-rotated phone photo, CMYK) at a reduced scale, 1/2, 1/4 or 1/8 (``Image.draft``), and the
  decode budget (``open_upload``) counts it at that size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from service.config import Limits

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # JPEG includes MPO (phones)
JPEG_FORMATS = ("JPEG", "MPO")  # what PIL names a JPEG once opened
EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255)

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
    "lanczos3": Image.Resampling.LANCZOS,
}


class InvalidImage(ValueError):
    """An upload that cannot be classified; ``reason`` says why, in words a user understands."""

    def __init__(self, filename: str, reason: str):
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


@dataclass(frozen=True)
class Resize:
    """How to bring an image to the model's input size (mirrors keras ``Resizing``)."""

    height: int
    width: int
    interpolation: str = "bilinear"
    crop_to_aspect_ratio: bool = True

    @classmethod
    def from_metadata(cls, metadata: dict) -> Resize:
        """From a model's ``metadata.json`` (``input_size`` and the optional "preprocessing")."""
        height, width = metadata["input_size"]
        preprocessing = metadata.get("preprocessing") or {}
        interpolation = preprocessing.get("resize", "bilinear")
        if interpolation not in RESAMPLING:
            raise ValueError(f"unsupported resize {interpolation!r} in metadata; one of {sorted(RESAMPLING)}")
        crop = bool(preprocessing.get("crop_to_aspect_ratio", True))
        return cls(int(height), int(width), interpolation, crop)


def prepare_image(
    data: bytes, filename: str, resize: Resize, limits: Limits = Limits(), opened: Image.Image | None = None
) -> np.ndarray:
    """Decode, crop and resize one upload: uint8 RGB ``[resize.height, resize.width, 3]``.
    ``opened``: ``data`` as ``open_upload`` opened it (its header read once, not twice)."""
    image = decode(data, filename, limits, draft_side=max(resize.height, resize.width), opened=opened)
    box = crop_box(image.height, image.width, resize) if resize.crop_to_aspect_ratio else None
    resized = image.resize((resize.width, resize.height), resample=RESAMPLING[resize.interpolation], box=box)
    return np.asarray(resized)


def crop_box(height: int, width: int, resize: Resize) -> tuple[int, int, int, int]:
    """The centered (left, top, right, bottom) box of the target aspect ratio, as keras crops it."""
    crop_height = max(min(height, int(width * resize.height / resize.width)), 1)
    crop_width = max(min(width, int(height * resize.width / resize.height)), 1)
    top = int((height - crop_height) / 2)
    left = int((width - crop_width) / 2)
    return (left, top, left + crop_width, top + crop_height)


def decode(
    data: bytes,
    filename: str,
    limits: Limits = Limits(),
    draft_side: int = 0,
    opened: Image.Image | None = None,
) -> Image.Image:
    """The upload as an 8-bit RGB image, upright; raises ``InvalidImage``. With ``draft_side``, a
    JPEG may be decoded at a reduced scale that keeps both sides at least ``draft_side`` pixels.
    ``opened``: ``data`` already opened by ``open_upload`` (nothing of it decoded yet)."""
    if not data:
        raise InvalidImage(filename, "the file is empty")
    if len(data) > limits.max_file_bytes:
        raise InvalidImage(filename, f"the file has {len(data)} bytes; the limit is {limits.max_file_bytes}")
    try:
        with opened or Image.open(io.BytesIO(data), formats=FORMATS) as image:
            _check_pixels(image, filename, limits)
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if _libjpeg_scalable(image, orientation, draft_side):
                scaled = _decode_jpeg_scaled(data, draft_side)
                if scaled is not None:
                    return scaled
            if draft_side:
                image.draft(image.mode, (draft_side, draft_side))  # no-op unless JPEG
            return _to_rgb(_upright(image, orientation), filename)
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage(
            filename, "not an image in a supported format (JPEG, PNG, WebP, BMP, GIF)"
        ) from None
    except Image.DecompressionBombError as error:
        raise InvalidImage(filename, f"decompression bomb refused: {error}") from None
    except Exception as error:
        raise InvalidImage(filename, f"the image cannot be decoded ({error})") from None


def _libjpeg_scalable(image: Image.Image, orientation: int, draft_side: int) -> bool:
    """Whether ``decode`` hands this image to libjpeg-turbo at a reduced scale."""
    return (
        bool(draft_side)
        and image.format in JPEG_FORMATS
        and image.mode in ("RGB", "L")
        and orientation not in range(2, 9)
    )


BYTES_PER_PIXEL = {
    "1": 5,
    "L": 5,
    "P": 5,
    "I;16": 8,
    "I;16B": 8,
    "I;16L": 8,
    "I;16N": 8,
    "I": 9,
    "RGB": 5,
    "RGBA": 9,
    "CMYK": 8,
    "YCbCr": 8,
    "LA": 13,
    "La": 13,
    "PA": 13,
    "RGBa": 13,
}
"""Memory that decoding one pixel of each mode to 8-bit RGB holds at once, in bytes: the decoded
pixel as Pillow stores it (1, 2 for 16-bit, 4 for three or four channels), the RGB result (4), and
what the conversion needs beside them (an alpha channel, a composited copy), rounded up from the
peak memory of decoding large images of each mode (tests/test_images.py checks the estimate). An
upright copy of an EXIF-rotated photo adds its decoded pixel again; a palette with a transparent
colour is decoded like ``PA``."""
UNKNOWN_MODE_BYTES_PER_PIXEL = 16


def open_upload(data: bytes, resize: Resize, limits: Limits = Limits()) -> tuple[int, Image.Image | None]:
    """The bytes ``prepare_image`` will hold at once to decode ``data`` (``BYTES_PER_PIXEL`` times
    the pixels actually decoded: a JPEG that libjpeg-turbo scales counts at its reduced size), read
    from the header alone, and the image it opened to read that (no pixel decoded), for
    ``prepare_image`` to go on with; ``(0, None)`` for a file that ``prepare_image`` refuses before
    decoding it (not an image, too many bytes or pixels: ``decode`` says why, by the same rules)."""
    draft_side = max(resize.height, resize.width)
    if len(data) > limits.max_file_bytes:
        return 0, None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception:
        return 0, None
    try:
        width, height = image.size
        if pixels_problem(width, height, limits):
            image.close()
            return 0, None
        orientation = _header_orientation(image)
        mode = "PA" if image.mode == "P" and "transparency" in image.info else image.mode
        if _libjpeg_scalable(image, orientation, draft_side):
            width, height = _jpeg_scaled_size(width, height, draft_side)
            return width * height * 7, image  # libjpeg-turbo's RGB array (3) and its image (4)
        if draft_side and image.format in JPEG_FORMATS and len(image.tile) == 1:
            width, height = _pil_draft_size(width, height, draft_side)  # decode's image.draft
    except Exception:
        image.close()
        return 0, None
    per_pixel = BYTES_PER_PIXEL.get(mode, UNKNOWN_MODE_BYTES_PER_PIXEL)
    if orientation in range(2, 9):
        per_pixel += BYTES_PER_PIXEL.get(mode, UNKNOWN_MODE_BYTES_PER_PIXEL)
    return width * height * per_pixel, image


def _header_orientation(image: Image.Image) -> int:
    """The EXIF orientation, read without decoding any pixel: JPEG and WebP carry EXIF before
    their pixels; for other formats (Pillow's ``getexif`` would decode a whole PNG to look for
    EXIF after its pixels) any EXIF seen in the header counts as a rotation (8, the costlier)."""
    if image.format in ("JPEG", "MPO", "WEBP"):
        return image.getexif().get(EXIF_ORIENTATION, 1)
    return 8 if "exif" in image.info else 1


def _pil_draft_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size PIL's ``JpegImageFile.draft(mode, (min_side, min_side))`` decodes at (a JPEG that
    ``decode`` does not hand to libjpeg-turbo directly: EXIF-rotated, CMYK): the largest scale of
    1/8, 1/4, 1/2 keeping both sides >= min_side, rounded up, as PIL computes it."""
    scale = min(width // min_side, height // min_side)
    step = next((s for s in (8, 4, 2) if scale >= s), 1)
    return (width + step - 1) // step, (height + step - 1) // step


def _jpeg_scaled_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size libjpeg-turbo decodes at: the smallest scale n/8 keeping both sides >= min_side."""
    for eighths in range(1, 9):
        scaled = (-(-width * eighths // 8), -(-height * eighths // 8))
        if min(scaled) >= min_side:
            return scaled
    return width, height


def pixels_problem(width: int, height: int, limits: Limits) -> str | None:
    """Why an image of these dimensions is refused (read from its header), or None: the one rule
    of the pixels of an uploaded image."""
    if width < 1 or height < 1:
        return f"the image has no pixels ({width}x{height})"
    if width * height > limits.max_pixels:
        return f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
    return None


def _check_pixels(image: Image.Image, filename: str, limits: Limits) -> None:
    """Refuse absurd dimensions from the header alone, before any pixel is decoded."""
    if problem := pixels_problem(*image.size, limits):
        raise InvalidImage(filename, problem)


def _decode_jpeg_scaled(data: bytes, min_side: int) -> Image.Image | None:
    """RGB pixels decoded by libjpeg-turbo at the smallest scale n/8 that keeps both sides at
    least ``min_side`` (or the full size, if smaller); None if it refuses the file (corrupt,
    truncated), which the caller then hands to PIL for the error message."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side, min_width=min_side)
    except ValueError:
        return None
    return Image.fromarray(pixels)


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation tag (a transposed copy only when the tag asks for one)."""
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image, filename: str) -> Image.Image:
    """8-bit RGB whatever the mode; loads the pixels (so truncation is detected here)."""
    image.load()
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "1", "CMYK", "YCbCr"):
        return image.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(image)
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "P", "La", "RGBa"):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    raise InvalidImage(filename, f"unsupported image mode {mode!r}")


SIXTEEN_BIT_ROWS = 256
"""Rows converted at a time, so no full-size wider copy of a 16-bit image is ever made."""


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale scaled to 8 bits, 65535 -> 255, a band of rows at a time."""
    width, height = image.size
    gray = np.empty((height, width), np.uint8)
    for top in range(0, height, SIXTEEN_BIT_ROWS):
        bottom = min(top + SIXTEEN_BIT_ROWS, height)
        values = np.asarray(image.crop((0, top, width, bottom))).astype(np.int64)
        gray[top:bottom] = ((values * 255 + 32767) // 65535).clip(0, 255)
    return Image.fromarray(gray).convert("RGB")
