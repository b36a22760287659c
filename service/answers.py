"""The answer for one image (docs/design.md, contract 2): ``{"label", "score", "top_k": [...]}``.

numpy only: the service (``service.service``) and the benchmarks' peer servers
(``benchmarks/peers``) answer with this one definition, so every server of a comparison returns
the same JSON for the same probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k_answer(probabilities: np.ndarray, labels: list[str], top_k: int) -> dict[str, Any]:
    """One image's result as plain JSON data: the best class, its probability, and the ``top_k``
    best classes (at most as many as there are labels), best first."""
    best = np.argsort(probabilities)[::-1][:top_k]
    ranked = [{"label": labels[i], "score": float(probabilities[i])} for i in best]
    return {"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked}
