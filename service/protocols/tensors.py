"""Pixels a client declared and sent as a tensor (``/v2``'s ``images``, ``/v1``'s
``serving_default``), checked against the limits from their declared shape before anything the
size of the images is allocated; and how an error message shows a value a client sent.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

from service.serving.errors import ServiceError
from service.serving.limits import check_count

SHOWN = reprlib.Repr()
"""How an error message shows a value a client sent: short, however large or deep it is."""
SHOWN.maxlevel, SHOWN.maxlist, SHOWN.maxdict, SHOWN.maxstring, SHOWN.maxother = 3, 6, 4, 40, 40


def shown(value: Any) -> str:
    """``value`` as an error message shows it (``SHOWN``)."""
    return SHOWN.repr(value)


def pixel_array(
    shape: Any,
    limits: Any,
    *,
    data: Any = None,
    buffer: bytes | memoryview | None = None,
    name: str = "images",
) -> np.ndarray:
    """uint8 images ``[n, h, w, 3]`` from a tensor a client declared (``shape``) and sent, either
    as raw bytes (``buffer``) or as numbers (``data``, flat or nested); 413 when the shape is over
    the limits, 400 when the shape, the byte count or a value is wrong, checked before anything
    the size of the images is allocated."""
    if not (
        isinstance(shape, list | tuple)
        and len(shape) == 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ServiceError(
            400, f"input '{name}' must have the shape [n, height, width, 3], got {shown(shape)}"
        )
    count, height, width, channels = shape
    if channels != 3 or 0 in (count, height, width):
        raise ServiceError(
            400,
            f"input '{name}' must have the shape [n, height, width, 3], none of them 0; got {shape}",
        )
    check_count(count, limits)
    if height * width > limits.max_pixels:
        raise ServiceError(
            413, f"{width}x{height} pixels per image; the limit is {limits.max_pixels} (CONVZOO_MAX_PIXELS)"
        )
    size = count * height * width * 3
    if buffer is not None:
        if len(buffer) != size:
            raise ServiceError(
                400,
                f"input '{name}' of shape {list(shape)} takes {size} bytes as UINT8; {len(buffer)} were sent",
            )
        return np.frombuffer(buffer, np.uint8).reshape(shape)
    return _numbers_to_pixels(data, list(shape), size, name)


def _numbers_to_pixels(data: Any, shape: list[int], size: int, name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ServiceError(400, f"input '{name}' has no data: send its values as a list (or as binary data)")
    if len(data) not in (size, shape[0]):  # flat, or nested by image: anything else is wrong
        raise ServiceError(400, f"input '{name}' of shape {shape} has {size} values; the data does not match")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise ServiceError(
            400, f"input '{name}': the values do not form a regular array (ragged lists?)"
        ) from None
    if array.size != size:
        raise ServiceError(400, f"input '{name}' of shape {shape} has {size} values; {array.size} were sent")
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
        raise ServiceError(400, f"input '{name}' must hold integers 0..255 (UINT8)")
    return array.astype(np.uint8).reshape(shape)
