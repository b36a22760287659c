"""What both peer servers share: the PIL decode, and how many classes they answer with (the
answer itself is ``service.answers.top_k_answer``, convzoo's own)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

TOP_K = 5


def decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Tutorial-style: open with PIL, convert to RGB, resize to (height, width) bilinear; uint8."""
    height, width = size
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb)
