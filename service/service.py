"""The convzoo HTTP service: raw images in, class probabilities out (BentoML 1.4).

Two BentoML services, started together by ``bentoml serve`` (``bentofile.yaml`` names
``Classifier``):

- ``Classifier`` (the HTTP API, port 3000): ``POST /classify`` and ``POST /metadata``. It decodes,
  validates and resizes every upload in a thread pool (``service.images``), refuses bad requests
  with a 4xx JSON answer, stacks the good images into one uint8 array and awaits ``Inference``.
  It never imports TensorFlow.
- ``Inference`` (one process per GPU, else one): owns the SavedModel. Its ``predict`` is
  ``batchable``: BentoML's adaptive batching merges the arrays of concurrent requests (from all
  API processes) into one call of the model's ``serving_default`` signature. Calls travel over a
  local Unix socket as pickled numpy arrays.

Both declare the model at class level (``bentoml.models.BentoModel``), so ``bentoml build``
packages it. Which model: ``CONVZOO_MODEL`` (see ``service.model_store``); every setting:
``service.config``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, Field, WrapValidator
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from service.config import count_gpus, load_config
from service.images import InvalidImage, Resize, prepare_image
from service.middleware import ApiKeyGuard, UploadGuard
from service.model_store import resolve_model_or_exit

logger = logging.getLogger("bentoml.convzoo")  # under "bentoml" so BentoML's log config shows it

CONFIG = load_config()
MODEL_TAG = resolve_model_or_exit(CONFIG)
GPUS = count_gpus()


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the client's filename and its bytes."""

    filename: str
    data: bytes


def _read_upload(value: Any, handler: Any) -> Upload:
    """Keep the client's filename and bytes (BentoML's own ``Path`` handling drops the name)."""
    if isinstance(value, UploadFile):
        value.file.seek(0)
        return Upload(value.filename or "", value.file.read())
    if isinstance(value, Path):  # a direct in-process call
        return Upload(value.name, value.read_bytes())
    raise ValueError("expected an uploaded file")


ImageFile = Annotated[Path, WrapValidator(_read_upload)]
"""A multipart file part. Typed ``Path`` so BentoML documents and sends it as a file; validated
into an ``Upload``."""


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str
    """The top-1 class name."""
    score: float
    """Its probability, 0..1."""
    top_k: list[LabelScore]
    """The ``top_k`` best classes, best first."""


@bentoml.service(
    name="convzoo-inference",
    workers=CONFIG.model_workers,
    resources={"gpu": GPUS} if GPUS else None,
    traffic={"timeout": CONFIG.timeout_s},
)
class Inference:
    """The SavedModel behind a batchable API: uint8 ``[n, h, w, 3]`` -> float32 ``[n, classes]``."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import tensorflow as tf  # only the inference processes load TensorFlow

        self.device = _select_device(tf)
        self.saved_model = tf.saved_model.load(self.bento_model.path)
        self.serving_default = self.saved_model.signatures["serving_default"]
        height, width = self.bento_model.info.metadata["input_size"]
        self.serving_default(images=np.zeros((1, height, width, 3), np.uint8))  # warm-up
        logger.info("serving %s on %s", MODEL_TAG, self.device)

    @bentoml.api(
        batchable=True,
        max_batch_size=CONFIG.max_batch_size,
        max_latency_ms=CONFIG.max_latency_ms,
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.serving_default(images=images)["probabilities"].numpy()


def _select_device(tf: Any) -> str:
    """GPU when TensorFlow sees one (memory growth on; worker i takes GPU i mod n), else CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    gpu = gpus[((bentoml.server_context.worker_index or 1) - 1) % len(gpus)]
    tf.config.set_visible_devices(gpu, "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    return f"GPU ({gpu.name})"


@bentoml.service(
    name="convzoo",
    workers=CONFIG.api_workers,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
)
class Classifier:
    """Image classification over HTTP (see README, "Service")."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)
    inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        metadata = self.bento_model.info.metadata
        self.labels: list[str] = list(metadata["labels"])
        self.resize = Resize.from_metadata(metadata)
        self.decoders = anyio.CapacityLimiter(CONFIG.decode_threads)
        self.model_metadata = {
            **metadata,
            "bentoml_tag": MODEL_TAG,
            "limits": {
                "max_images": CONFIG.limits.max_images,
                "max_request_bytes": CONFIG.limits.max_request_bytes,
                "max_file_bytes": CONFIG.limits.max_file_bytes,
                "max_pixels": CONFIG.limits.max_pixels,
                "top_k_default": CONFIG.top_k,
                "top_k_max": CONFIG.max_top_k,
            },
        }

    @bentoml.api
    async def classify(
        self,
        images: list[ImageFile],
        top_k: Annotated[int, Field(ge=1, le=CONFIG.max_top_k)] = CONFIG.top_k,
    ) -> list[Prediction]:
        """Classify the uploaded images (multipart field ``images``), in request order."""
        uploads: list[Upload] = images  # type: ignore[assignment]  (see ImageFile)
        if len(uploads) > CONFIG.limits.max_images:
            return _error(
                413, f"{len(uploads)} images in one request; the limit is "
                f"{CONFIG.limits.max_images} (CONVZOO_MAX_IMAGES)",
            )
        prepared = await asyncio.gather(*(self._prepare(i, u) for i, u in enumerate(uploads)))
        refused = [p for p in prepared if isinstance(p, dict)]
        if refused:
            return _error(
                400, f"{len(refused)} of {len(uploads)} images refused; nothing was classified",
                files=refused,
            )
        probabilities = await self._predict(np.stack(prepared))
        return [self._prediction(p, min(top_k, len(self.labels))) for p in probabilities]

    @bentoml.api
    async def metadata(self) -> dict[str, Any]:
        """The model served (name, version, labels, input_size, ...) and the request limits."""
        return self.model_metadata

    async def _predict(self, batch: np.ndarray) -> np.ndarray:
        """``Inference.predict``, retried once when the local connection to it breaks.

        BentoML 1.4.40's dependency client renews its HTTP session every 100 calls and closes the
        old one under calls still in flight (bentoml/BentoML#4971, fix pending in #5698); those
        calls fail with a connection error. ``predict`` is a pure function, so repeating it is safe.
        """
        try:
            return await self.inference.to_async.predict(batch)
        except (aiohttp.ClientError, RuntimeError) as error:  # RuntimeError: "Session is closed"
            logger.info("retrying a model call after a dropped connection (%r)", error)
            return await self.inference.to_async.predict(batch)

    async def _prepare(self, index: int, upload: Upload) -> np.ndarray | dict[str, Any]:
        """The model-ready array, or the refusal ``{"index", "file", "reason"}``."""
        filename = upload.filename or f"images[{index}]"
        try:
            return await anyio.to_thread.run_sync(
                prepare_image, upload.data, filename, self.resize, CONFIG.limits,
                limiter=self.decoders,
            )
        except InvalidImage as error:
            return {"index": index, "file": error.filename, "reason": error.reason}

    def _prediction(self, probabilities: np.ndarray, top_k: int) -> Prediction:
        best = np.argsort(probabilities)[::-1][:top_k]
        ranked = [LabelScore(label=self.labels[i], score=float(probabilities[i])) for i in best]
        return Prediction(label=ranked[0].label, score=ranked[0].score, top_k=ranked)


def _error(status: int, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"error": message, **details}, status_code=status)


if CONFIG.api_key:  # added first, so it runs before anything reads the body
    Classifier.add_asgi_middleware(ApiKeyGuard, key=CONFIG.api_key)
Classifier.add_asgi_middleware(
    UploadGuard, path="/classify", file_field="images", max_bytes=CONFIG.limits.max_request_bytes
)
