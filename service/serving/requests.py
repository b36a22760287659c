"""What a request is, whichever protocol it came in by: the model a client named (``ModelSpec``)
and its images (``Files`` to decode, ``Pixels`` to resize) in an ``InferRequest``; the data plane's
answer, an ``InferResponse`` (``service.serving.dataplane``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.serving.registry import ServedVersion


@dataclass(frozen=True)
class Upload:
    """One encoded image: the client's filename (or a name for it) and its bytes."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class ModelSpec:
    """The model a client named, parsed by ``DataPlane.resolve`` inside the request's life:
    ``text`` as a form field or ``/metadata`` writes it (``name``, ``name:3``, ``name:latest``;
    None or empty: the default model), or ``name`` and ``version`` from a URL path (``version``
    None or ``latest``: the highest served)."""

    text: str | None = None
    name: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Files:
    """Encoded images (``/classify``'s uploads, ``image_bytes``), decoded as ``/classify`` does."""

    uploads: list[Upload]

    @property
    def count(self) -> int:
        return len(self.uploads)


@dataclass(frozen=True)
class Pixels:
    """uint8 images ``[n, h, w, 3]`` of any size, cropped and resized as an upload is."""

    array: np.ndarray

    @property
    def count(self) -> int:
        return len(self.array)


Inputs = Files | Pixels


@dataclass(frozen=True)
class InferRequest:
    """One request, as every protocol says it. ``protocol``: the metrics' label (``convzoo``,
    ``v2``, ``tfserving``). ``inputs``: the images, or the adapter's parse of its body
    (``served -> Inputs``, awaited inside the life cycle once the model is resolved, so a body that
    is refused is counted with the model's labels; it checks the image count as it parses, before
    anything is allocated). Images given ready are counted by the data plane."""

    protocol: str
    model: ModelSpec
    inputs: Inputs | Callable[[ServedVersion], Awaitable[Inputs]]


@dataclass(frozen=True)
class InferResponse:
    served: ServedVersion
    probabilities: np.ndarray
