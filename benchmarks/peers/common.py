"""What both peer servers share: the PIL decode and the answer's JSON shape (docs/design.md, contract 2)."""

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


def answer(probabilities: np.ndarray, labels: list[str], top_k: int = TOP_K) -> dict:
    """One image's result: ``{"label", "score", "top_k": [{"label", "score"}, ...]}``, best first."""
    best = np.argsort(probabilities)[::-1][:top_k]
    ranked = [{"label": labels[i], "score": float(probabilities[i])} for i in best]
    return {"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked}
