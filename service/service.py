"""The convzoo HTTP service: raw images in, class probabilities out (BentoML 1.4).

One BentoML service, ``Classifier`` (``bentoml serve``; ``bentofile.yaml`` names it), port 3000:
``POST /classify`` and ``POST /metadata``. Each worker process (one per GPU, else one):

1. decodes, validates and resizes every upload (``service.images``; in a thread pool when the
   process may use several CPUs, on the event loop when it has one) and refuses bad requests
   with a 4xx JSON answer, so only good images go further;
2. stacks a request's images into one uint8 array and hands it to its ``Batcher``
   (``service.batching``), which merges the arrays of concurrent requests into one call of the
   model, in a worker thread of the same process. The model runs on the runtime that
   ``service.runtimes`` chooses (``CONVZOO_RUNTIME``, default ``auto``): on a CPU, the fastest
   OpenVINO form of the export that passed its accuracy gate (int8 for the default model), else
   TensorFlow's ``serving_default``. TensorFlow is imported only when it serves.

The model lives in the API process on purpose: no second service, no pickling, no local HTTP hop
per batch, no batching window to wait for (measured in benchmarks/README.md, "What we tried").

The model is declared at class level (``service.model_store.ServedModel``, a BentoML model
reference), so ``bentoml build`` packages it; it is resolved, and the runtime chosen, when the
server starts and when a worker constructs ``Classifier``, never when this module is imported
(a model or runtime that cannot serve stops the server with one line). Which model:
``CONVZOO_MODEL`` (see ``service.model_store``); every setting: ``service.config``; the app around
the API (metrics, library settings, OpenAPI): ``service.app``.

Decoding is bounded by memory, not only by pixels (``service.images.decode_cost``: the bytes per
pixel each mode really takes, 16-bit and alpha included): a request whose images would need more
than ``CONVZOO_MAX_IMAGE_DECODE_BYTES`` for one of them or ``CONVZOO_MAX_REQUEST_DECODE_BYTES`` for
all is refused with 413 before anything is decoded, and all decodes of a process together hold at
most ``CONVZOO_DECODE_MEMORY_BYTES`` (``DecodeMemory``): a costly request waits for memory, the
others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, Field, WrapValidator
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from service import runtimes
from service.answers import public_metadata, top_k_answer
from service.app import ConvzooService
from service.batching import Batcher
from service.config import ServiceConfig, settings
from service.images import InvalidImage, Resize, decode_cost, prepare_image
from service.middleware import ApiKeyGuard, RequestGuard
from service.model_store import ServedModel
from service.openapi import ApiDescription
from service.ui import mount_ui

logger = logging.getLogger("bentoml.convzoo")  # under "bentoml" so BentoML's log config shows it

CONFIG = settings()
MODEL = ServedModel(CONFIG)
INLINE_DECODE_BYTES = 64 * 1024 * 1024
"""Without decode threads (one CPU), images whose decoding takes more memory than this (some 10
megapixels and up, ~0.3 s and more of decoding) still go to a thread, one at a time, so that the
event loop keeps answering meanwhile."""


def choose_runtime_or_exit(model: bentoml.Model, config: ServiceConfig) -> runtimes.Choice:
    """The runtime for ``model`` (``service.runtimes.choose``); a requested runtime that cannot
    serve stops the service with one line, ``auto``'s fallback to TensorFlow is a warning."""
    try:
        choice = runtimes.choose(config.runtime, model.info.metadata, model.path, gpus=config.gpus)
    except runtimes.RuntimeUnavailable as error:
        print(f"convzoo: cannot serve {model.tag}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if config.runtime == "auto" and not config.gpus and (choice.key == "tensorflow" or choice.skipped):
        logger.warning("%s: %s", model.tag, choice.reason)
    return choice


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the client's filename and its bytes."""

    filename: str
    data: bytes


def _read_upload(value: Any, handler: Any) -> Upload:
    """Keep the client's filename and bytes (BentoML's own ``Path`` handling drops the name).
    Only an uploaded file is taken: never a text value, which BentoML would treat as a URL."""
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


class DecodeMemory:
    """Bytes that the decodes of one process may hold at once: ``async with memory.hold(n)`` waits
    until ``n`` bytes are free (any waiter that fits goes first, so small images pass big ones)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._changed: asyncio.Condition | None = None  # made inside the server's event loop

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.capacity)
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= size)
            self.free -= size
        try:
            yield
        finally:
            async with self._changed:
                self.free += size
                self._changed.notify_all()


@bentoml.service(
    name="convzoo",
    workers=CONFIG.workers,
    resources={"gpu": CONFIG.gpus} if CONFIG.gpus else None,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    service_class=ConvzooService,  # convzoo's app and OpenAPI description (service/app.py)
)
class Classifier:
    """Image classification over HTTP (see README, "Service")."""

    bento_model = MODEL

    @bentoml.on_deployment
    def check_runtime() -> None:
        """In the server process, before any worker starts: a runtime that cannot serve stops it."""
        choose_runtime_or_exit(MODEL.resolve(), CONFIG)

    def __init__(self) -> None:
        model: bentoml.Model = self.bento_model
        metadata = model.info.metadata
        self.tag = str(model.tag)
        self.runtime = choose_runtime_or_exit(model, CONFIG)
        self.labels: list[str] = list(metadata["labels"])
        self.resize = Resize.from_metadata(metadata)
        # None: decode on the event loop (CONVZOO_DECODE_THREADS=0, the default on one CPU)
        self.decoders = anyio.CapacityLimiter(CONFIG.decode_threads) if CONFIG.decode_threads else None
        self.decode_memory = DecodeMemory(CONFIG.decode_memory_bytes)
        # without decode threads, images too large to decode inline (INLINE_DECODE_BYTES)
        self.large_decoder = anyio.CapacityLimiter(1)
        self.model = self._load_model(model.path)
        self.batcher = Batcher(self.model, CONFIG.max_batch_size, _batch_size_histogram().observe)
        _freeze_startup_objects()
        self.model_metadata = public_metadata(
            {
                **metadata,
                "bentoml_tag": self.tag,
                "runtime": runtimes.describe(self.runtime),
                "limits": _public_limits(CONFIG),
            }
        )

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
                413,
                f"{len(uploads)} images in one request; the limit is "
                f"{CONFIG.limits.max_images} (CONVZOO_MAX_IMAGES)",
            )
        costs = [decode_cost(upload.data, self.resize, CONFIG.limits) for upload in uploads]
        if refusal := _over_decode_budget(uploads, costs, CONFIG):
            return refusal
        prepared = await asyncio.gather(
            *(self._prepare(i, u, c) for i, (u, c) in enumerate(zip(uploads, costs, strict=True)))
        )
        refused = [p for p in prepared if isinstance(p, dict)]
        if refused:
            return _error(
                400,
                f"{len(refused)} of {len(uploads)} images refused; nothing was classified",
                files=refused,
            )
        probabilities = await self.batcher(np.stack(prepared))
        top_k = min(top_k, len(self.labels))
        return JSONResponse([top_k_answer(p, self.labels, top_k) for p in probabilities])

    @bentoml.api
    async def metadata(self) -> dict[str, Any]:
        """The model served (name, version, labels, input_size, ...) and the request limits."""
        return self.model_metadata

    async def _prepare(self, index: int, upload: Upload, cost: int) -> np.ndarray | dict[str, Any]:
        """The model-ready array, or the refusal ``{"index", "file", "reason"}``; decoded once
        ``cost`` bytes of the process's decoding memory are free."""
        filename = upload.filename or f"images[{index}]"
        try:
            async with self.decode_memory.hold(cost):
                if self.decoders is None and cost <= INLINE_DECODE_BYTES:
                    return prepare_image(upload.data, filename, self.resize, CONFIG.limits)
                return await anyio.to_thread.run_sync(
                    prepare_image,
                    upload.data,
                    filename,
                    self.resize,
                    CONFIG.limits,
                    limiter=self.decoders or self.large_decoder,
                )
        except InvalidImage as error:
            return {"index": index, "file": error.filename, "reason": error.reason}

    def _load_model(self, path: str) -> runtimes.LoadedModel:
        """The model on ``self.runtime``, warmed up at every batch size the batcher can form:
        uint8 images ``[n, height, width, 3]`` -> float32 probabilities ``[n, classes]``."""
        where = "CPU"
        if self.runtime.runtime == "tensorflow":
            import tensorflow as tf  # only here: an OpenVINO worker never loads TensorFlow

            where = _select_device(tf)
        loaded = runtimes.load(self.runtime, path)
        runtimes.warm_up(loaded, (self.resize.height, self.resize.width), CONFIG.max_batch_size)
        logger.info(
            "serving %s with %s %s on %s (%s; worker %s)",
            self.tag,
            self.runtime.runtime,
            self.runtime.precision,
            where,
            self.runtime.reason,
            _worker_index(),
        )
        return loaded


def _over_decode_budget(
    uploads: list[Upload], costs: list[int], config: ServiceConfig
) -> JSONResponse | None:
    """The 413 for a request whose images would take more decoding memory than allowed, or None."""
    limits = config.limits
    over = [
        {
            "index": i,
            "file": upload.filename or f"images[{i}]",
            "reason": f"decoding it takes {cost} bytes; the limit is {limits.max_image_decode_bytes} "
            "(CONVZOO_MAX_IMAGE_DECODE_BYTES)",
        }
        for i, (upload, cost) in enumerate(zip(uploads, costs, strict=True))
        if cost > limits.max_image_decode_bytes
    ]
    if over:
        return _error(
            413, "an image takes more memory to decode than one image may (decode budget)", files=over
        )
    if sum(costs) > limits.max_request_decode_bytes:
        return _error(
            413,
            f"decoding these {len(uploads)} images takes {sum(costs)} bytes; the limit of one request "
            f"is {limits.max_request_decode_bytes} (CONVZOO_MAX_REQUEST_DECODE_BYTES): send fewer or "
            "smaller images",
        )
    return None


def _public_limits(config: ServiceConfig) -> dict[str, int]:
    """What ``/metadata`` says under ``limits``."""
    limits = config.limits
    return {
        "max_images": limits.max_images,
        "max_request_bytes": limits.max_request_bytes,
        "max_file_bytes": limits.max_file_bytes,
        "max_pixels": limits.max_pixels,
        "max_image_decode_bytes": limits.max_image_decode_bytes,
        "max_request_decode_bytes": limits.max_request_decode_bytes,
        "max_body_bytes": limits.max_body_bytes,
        "top_k_default": config.top_k,
        "top_k_max": config.max_top_k,
    }


GC_THRESHOLDS = (10_000, 50, 100)
"""Young-generation allocations before a collection, and the two older generations' counts
(CPython's defaults: 700, 10, 10)."""


def _freeze_startup_objects() -> None:
    """Keep the ~400,000 objects of TensorFlow, BentoML and the model out of every garbage
    collection from now on (``gc.freeze``), and collect the young generation less often.

    Serving allocates many short-lived containers per request, and the collections they trigger
    kept walking the objects loaded at startup (a profile shows it as time spent on allocating
    lines all over the request path). Frozen, those are never scanned (nor freed, which they
    would not be anyway); collections touch only what requests allocate (measured in
    benchmarks/README.md, "What we tried").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _select_device(tf: Any) -> str:
    """GPU when TensorFlow sees one (memory growth on; worker i takes GPU i mod n), else CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    gpu = gpus[(_worker_index() - 1) % len(gpus)]
    tf.config.set_visible_devices(gpu, "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    return f"GPU ({gpu.name})"


def _worker_index() -> int:
    return bentoml.server_context.worker_index or 1


def _batch_size_histogram() -> Any:
    """``convzoo_batch_size`` on ``/metrics``: images per model call (imported late, once the
    worker has set up Prometheus' multiprocess mode)."""
    import prometheus_client

    buckets = [2**i for i in range(CONFIG.max_batch_size.bit_length())] + [CONFIG.max_batch_size]
    return prometheus_client.Histogram(
        "convzoo_batch_size", "Images per model call", buckets=sorted(set(buckets))
    )


def _error(status: int, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"error": message, **details}, status_code=status)


if CONFIG.api_key:  # added first, so it runs before anything reads the body
    Classifier.add_asgi_middleware(ApiKeyGuard, key=CONFIG.api_key)
Classifier.add_asgi_middleware(
    RequestGuard,
    upload_path="/classify",
    file_field="images",
    max_upload_bytes=CONFIG.limits.max_request_bytes,
    max_body_bytes=CONFIG.limits.max_body_bytes,
    body_timeout_s=CONFIG.body_timeout_s,
    body_deadline_s=CONFIG.timeout_s,
    max_buffered_bytes=CONFIG.max_buffered_bytes,
)
Classifier.add_asgi_middleware(ApiDescription, service=Classifier)  # /docs.json for the request's host
mount_ui(Classifier)  # the browser page at /ui/ (service/ui.py)
