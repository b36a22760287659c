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

The model is declared at class level (``bentoml.models.BentoModel``), so ``bentoml build``
packages it. Which model: ``CONVZOO_MODEL`` (see ``service.model_store``); every setting:
``service.config``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
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
from service.batching import Batcher
from service.config import count_gpus, load_config
from service.images import InvalidImage, Resize, prepare_image
from service.middleware import ApiKeyGuard, UploadGuard
from service.model_store import resolve_model_or_exit
from service.openapi import ConvzooService
from service.ui import mount_ui

logger = logging.getLogger("bentoml.convzoo")  # under "bentoml" so BentoML's log config shows it

CONFIG = load_config()
MODEL_TAG = resolve_model_or_exit(CONFIG)
GPUS = count_gpus()


def _choose_runtime_or_exit() -> runtimes.Choice:
    """The runtime for ``MODEL_TAG`` (``service.runtimes.choose``); a requested runtime that
    cannot serve stops the service with one line, ``auto``'s fallback to TensorFlow is a warning."""
    model = bentoml.models.get(MODEL_TAG)
    try:
        choice = runtimes.choose(CONFIG.runtime, model.info.metadata, model.path, gpus=GPUS)
    except runtimes.RuntimeUnavailable as error:
        print(f"convzoo: cannot serve {MODEL_TAG}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if CONFIG.runtime == "auto" and not GPUS and (choice.key == "tensorflow" or choice.skipped):
        logger.warning("%s: %s", MODEL_TAG, choice.reason)
    return choice


RUNTIME = _choose_runtime_or_exit()


def _spans_off_unless_exported() -> None:
    """Turn the OpenTelemetry SDK off (``OTEL_SDK_DISABLED=true``) when BentoML exports no traces.

    BentoML opens OpenTelemetry spans around every request, and around every ``receive`` and
    ``send`` of it, even with no trace exporter configured (its default), where they go nowhere;
    they cost 4 % of the service's throughput (benchmarks/README.md, "What we tried", row 22).
    A configured ``tracing.exporter_type``, or ``OTEL_SDK_DISABLED`` set by the user either way,
    leaves everything as it is. Runs when BentoML imports this module, before it builds the
    server's tracer, in the server and in each worker.
    """
    if "OTEL_SDK_DISABLED" in os.environ:
        return
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        exporter = BentoMLContainer.tracing.exporter_type.get()
    except Exception:
        return
    if not exporter:
        os.environ["OTEL_SDK_DISABLED"] = "true"


_spans_off_unless_exported()


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
    name="convzoo",
    workers=CONFIG.workers,
    resources={"gpu": GPUS} if GPUS else None,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    service_class=ConvzooService,  # convzoo's OpenAPI title, version and description
)
class Classifier:
    """Image classification over HTTP (see README, "Service")."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        metadata = self.bento_model.info.metadata
        self.labels: list[str] = list(metadata["labels"])
        self.resize = Resize.from_metadata(metadata)
        # None: decode on the event loop (CONVZOO_DECODE_THREADS=0, the default on one CPU)
        self.decoders = anyio.CapacityLimiter(CONFIG.decode_threads) if CONFIG.decode_threads else None
        self.model = _load_model(self.bento_model.path, self.resize, CONFIG.max_batch_size)
        self.batcher = Batcher(self.model, CONFIG.max_batch_size, _batch_size_histogram().observe)
        _freeze_startup_objects()
        self.model_metadata = {
            **metadata,
            "bentoml_tag": MODEL_TAG,
            "runtime": runtimes.describe(RUNTIME),
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
                413,
                f"{len(uploads)} images in one request; the limit is "
                f"{CONFIG.limits.max_images} (CONVZOO_MAX_IMAGES)",
            )
        prepared = await asyncio.gather(*(self._prepare(i, u) for i, u in enumerate(uploads)))
        refused = [p for p in prepared if isinstance(p, dict)]
        if refused:
            return _error(
                400,
                f"{len(refused)} of {len(uploads)} images refused; nothing was classified",
                files=refused,
            )
        probabilities = await self.batcher(np.stack(prepared))
        top_k = min(top_k, len(self.labels))
        return JSONResponse([self._prediction(p, top_k) for p in probabilities])

    @bentoml.api
    async def metadata(self) -> dict[str, Any]:
        """The model served (name, version, labels, input_size, ...) and the request limits."""
        return self.model_metadata

    async def _prepare(self, index: int, upload: Upload) -> np.ndarray | dict[str, Any]:
        """The model-ready array, or the refusal ``{"index", "file", "reason"}``."""
        filename = upload.filename or f"images[{index}]"
        try:
            if self.decoders is None:
                return prepare_image(upload.data, filename, self.resize, CONFIG.limits)
            return await anyio.to_thread.run_sync(
                prepare_image,
                upload.data,
                filename,
                self.resize,
                CONFIG.limits,
                limiter=self.decoders,
            )
        except InvalidImage as error:
            return {"index": index, "file": error.filename, "reason": error.reason}

    def _prediction(self, probabilities: np.ndarray, top_k: int) -> dict[str, Any]:
        """One image's ``Prediction`` as plain JSON data. ``classify`` answers with a ready
        ``JSONResponse``: left to BentoML, every answer would first rebuild the JSON schema of
        ``list[Prediction]`` (to pick the media type), a fifth of the event loop's time."""
        best = np.argsort(probabilities)[::-1][:top_k]
        ranked = [{"label": self.labels[i], "score": float(probabilities[i])} for i in best]
        return {"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked}


def _load_model(path: str, resize: Resize, max_batch_size: int) -> runtimes.Predict:
    """The model on ``RUNTIME`` as a numpy function, warmed up at every batch size the batcher
    can form: uint8 images ``[n, height, width, 3]`` -> float32 probabilities ``[n, classes]``."""
    where = "CPU"
    if RUNTIME.runtime == "tensorflow":
        import tensorflow as tf  # only here: an OpenVINO worker never loads TensorFlow

        where = _select_device(tf)
    predict = runtimes.load(RUNTIME, path)
    runtimes.warm_up(predict, (resize.height, resize.width), max_batch_size)
    logger.info(
        "serving %s with %s %s on %s (%s; worker %s)",
        MODEL_TAG,
        RUNTIME.runtime,
        RUNTIME.precision,
        where,
        RUNTIME.reason,
        _worker_index(),
    )
    return predict


GC_THRESHOLDS = (10_000, 50, 100)
"""Young-generation allocations before a collection, and the two older generations' counts
(CPython's defaults: 700, 10, 10)."""


def _freeze_startup_objects() -> None:
    """Keep the ~400,000 objects of TensorFlow, BentoML and the model out of every garbage
    collection from now on (``gc.freeze``), and collect the young generation less often.

    Serving allocates many short-lived containers per request, and the collections they trigger
    kept walking the objects loaded at startup (a profile shows it as time spent on allocating
    lines all over the request path). Frozen, those are never scanned (nor freed, which they
    would not be anyway); collections touch only what requests allocate. Measured: 4 % more
    images/s (benchmarks/README.md, "What we tried", row 21).
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
    UploadGuard, path="/classify", file_field="images", max_bytes=CONFIG.limits.max_request_bytes
)
mount_ui(Classifier)  # the browser page at /ui/ (service/ui.py)
