"""What the API answers with (docs/design.md, contract 2), apart from errors.

- ``top_k_answer``: one image's result, ``{"label", "score", "top_k": [...]}``. numpy only: the
  service (``service.service``) and the benchmarks' peer servers (``benchmarks/peers``) answer with
  this one definition, so every server of a comparison returns the same JSON for the same
  probabilities.
- ``public_metadata``: what ``POST /metadata`` shows of an export's ``metadata.json``: all of it
  but what describes the machines that trained and optimized it (``HOST_DETAILS``), and with every
  absolute path cut to its last component (``/data/imagenette2-train`` -> ``imagenette2-train``,
  also in the recorded ``command``), for exports that still store them.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np


def top_k_answer(probabilities: np.ndarray, labels: list[str], top_k: int) -> dict[str, Any]:
    """One image's result as plain JSON data: the best class, its probability, and the ``top_k``
    best classes (at most as many as there are labels), best first."""
    best = np.argsort(probabilities)[::-1][:top_k]
    ranked = [{"label": labels[i], "score": float(probabilities[i])} for i in best]
    return {"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked}


HOST_DETAILS = (("run",), ("training", "device"))
"""Keys (paths into metadata.json) about the training machine, which a user of the API never needs:
the run folder there, the accelerator it trained on."""
KEEP_AS_IS = ("labels",)
"""Keys whose strings are data, not text that may hold a path (a label may well start with '/')."""
ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/-])(?:/|[A-Za-z]:\\)[^\s'"`,;]+""")


def public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` without ``HOST_DETAILS`` and with absolute paths cut (module docstring)."""
    public = {key: value if key in KEEP_AS_IS else strip_paths(value) for key, value in metadata.items()}
    for *parents, key in HOST_DETAILS:
        holder: Any = public
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(key, None)
    return public


def strip_paths(value: Any) -> Any:
    """``value`` (JSON data) with every absolute path in its strings cut to its last component."""
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(_last_component, value)
    if isinstance(value, dict):
        return {key: strip_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_paths(item) for item in value]
    return value


def _last_component(match: re.Match) -> str:
    path = match.group(0)
    pure = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
    return pure.name or "/"
