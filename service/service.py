"""The convzoo HTTP service: raw images in, class probabilities out (BentoML 1.4).

One BentoML service, ``Classifier`` (``bentoml serve``; ``bentofile.yaml`` names it), port 3000,
serving every model of the repository (``service.serving.dataplane``: the registry, the watcher
that reloads new versions, one life cycle for every request) through three protocols
(``service.protocols``, thin adapters):

- convzoo's own API: ``POST /classify`` (multipart uploads, optional ``top_k`` and ``model``) and
  ``POST /metadata``, defined here (the ``@bentoml.api`` methods: their parameters are the API)
  and answered over HTTP by ``service.protocols.convzoo.ClassifyRoute``;
- the Open Inference Protocol (v2) under ``/v2`` (``service.protocols.oip``), as Triton and KServe
  speak it;
- TensorFlow Serving's REST API under ``/v1`` (``service.protocols.tfserving``).

Each worker process (one per GPU, else one) checks every upload's header, refuses bad requests
with a 4xx JSON answer, and hands the request to the ``Batcher`` of the model version asked for
(``service.serving.batching``), which merges concurrent requests into one call of the model in a
worker thread. The uploads are decoded and resized in a thread pool, before, when the process may
use several CPUs, or by the model's thread just before the batch when it has one
(``service.serving.dataplane``). The model runs on the runtime that ``service.runtimes`` chooses
(``CONVZOO_RUNTIME``, default ``auto``): on a CPU, the fastest OpenVINO form of the export that
passed its accuracy gate (int8 for the default model), else TensorFlow's ``serving_default``.

The model lives in the API process on purpose: no second service, no pickling, no local HTTP hop
per batch, no batching window to wait for (measured in benchmarks/README.md, "What we tried").

The default model is declared at class level (``service.serving.model_store.ServedModel``, a
BentoML model reference), so ``bentoml build`` packages it; it is resolved, and the runtime
chosen, when the server starts and when a worker constructs ``Classifier``, never when this module
is imported (a default model or runtime that cannot serve stops the server with one line). Which
model: ``CONVZOO_MODEL`` (see ``service.serving.model_store``); which others: ``CONVZOO_MODELS``
(see ``service.serving.registry``); every setting: ``service.config``; the app around the API
(metrics, library settings, OpenAPI): ``service.http.app``.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field, WrapValidator
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from service import runtimes
from service.config import ServiceConfig, settings
from service.http.app import ConvzooService
from service.http.auth import ApiKeyGuard
from service.http.body import RequestGuard
from service.http.openapi import ApiDescription
from service.http.ui import mount_ui
from service.protocols import convzoo
from service.protocols.oip import InferRoute, mount_oip
from service.protocols.tfserving import mount_tfserving
from service.serving.dataplane import DataPlane
from service.serving.errors import ServiceError, error_response
from service.serving.model_store import ServedModel, check_export
from service.serving.requests import ModelSpec, Upload

logger = logging.getLogger("bentoml.convzoo")  # under "bentoml" so BentoML's log config shows it

CONFIG = settings()
MODEL = ServedModel(CONFIG)
PLANE = DataPlane(CONFIG)
"""This worker's data plane: its served models (filled when ``Classifier`` is constructed)."""
TENSOR_PATHS = ("/v2/models/", "/v1/models/")
"""Routes whose bodies carry images (tensors): JSON bounded by ``CONVZOO_MAX_JSON_BYTES``, the
binary data extension like uploads (``RequestGuard``)."""
BINARY_PATHS = ("/v2/models/",)
"""Routes that take the binary data extension (``Inference-Header-Content-Length``)."""


def choose_runtime_or_exit(model: bentoml.Model, config: ServiceConfig) -> runtimes.Choice:
    """The runtime for ``model`` (``service.runtimes.choose``), in the server process before any
    worker starts; a requested runtime that cannot serve stops the service with one line,
    ``auto``'s fallback to TensorFlow is a warning (each worker warns again for every version it
    loads: ``service.serving.registry.load_version``, where a worker chooses, once per version)."""
    try:
        choice = runtimes.choose(config.runtime, model.info.metadata, model.path, gpus=config.gpus)
    except runtimes.RuntimeUnavailable as error:
        print(f"convzoo: cannot serve {model.tag}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if config.runtime == "auto" and not config.gpus and (choice.key == "tensorflow" or choice.skipped):
        logger.warning("%s: %s", model.tag, choice.reason)
    return choice


def check_model_or_exit(model: bentoml.Model, choice: runtimes.Choice) -> None:
    """``runtimes.signature_problem`` for the default model on ``choice``; one line and exit 2."""
    metadata = check_export(Path(model.path))
    loaded = runtimes.load(choice, model.path, threads=1)
    size = tuple(metadata["input_size"])
    if problem := runtimes.signature_problem(loaded, size, len(metadata["labels"])):
        print(f"convzoo: cannot serve {model.tag}: {model.path}: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _read_upload(value: Any, handler: Any) -> Upload:
    """Keep the client's filename and bytes (BentoML's own ``Path`` handling drops the name).
    Only an uploaded file is taken (BentoML's ``UploadFile``, or the ``Upload`` that
    ``ClassifyRoute`` read): never a text value, which BentoML would treat as a URL."""
    if isinstance(value, Upload):
        return value
    if isinstance(value, UploadFile):
        value.file.seek(0)
        return Upload(value.filename or "", value.file.read())
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
    resources={"gpu": CONFIG.gpus} if CONFIG.gpus else None,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    service_class=ConvzooService,  # convzoo's app and OpenAPI description (service/http/app.py)
)
class Classifier:
    """Image classification over HTTP (see README, "Service")."""

    bento_model = MODEL

    @bentoml.on_deployment
    def check_runtime() -> None:
        """In the server process, before any worker starts: a runtime that cannot serve stops it, and
        so does an OpenVINO model that contradicts its metadata (loaded here: it is cheap, and a
        worker that fails is restarted by BentoML rather than stopping the server)."""
        model = MODEL.resolve()
        if (choice := choose_runtime_or_exit(model, CONFIG)).runtime == "openvino":
            check_model_or_exit(model, choice)

    def __init__(self) -> None:
        model: bentoml.Model = self.bento_model
        where = "CPU"
        if CONFIG.gpus:
            import tensorflow as tf  # only here: an OpenVINO worker never loads TensorFlow

            where = f"{_select_device(tf)}, worker {_worker_index()}"
        PLANE.start(Path(model.path), str(model.tag), where)
        self.plane = PLANE
        _freeze_startup_objects()

    @bentoml.api
    async def classify(
        self,
        images: list[ImageFile],
        top_k: Annotated[int, Field(ge=1, le=CONFIG.max_top_k)] = CONFIG.top_k,
        model: str | None = None,
    ) -> list[Prediction]:
        """Classify the uploaded images (multipart field ``images``), in request order, with the
        default model or ``model`` (``name`` or ``name:version``)."""
        uploads: list[Upload] = images  # type: ignore[assignment]  (see ImageFile)
        try:
            return JSONResponse(await convzoo.classify(self.plane, uploads, top_k, model))
        except ServiceError as error:
            return error_response(error)

    @bentoml.api
    async def metadata(self, model: str | None = None) -> dict[str, Any]:
        """The model served (name, version, labels, input_size, ...): the default one or ``model``
        (``name`` or ``name:version``), the request limits, and every model version served."""
        try:
            return self.plane.describe(ModelSpec(text=model))
        except ServiceError as error:
            return error_response(error)


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


if CONFIG.api_key:  # added first, so it runs before anything reads the body
    Classifier.add_asgi_middleware(ApiKeyGuard, key=CONFIG.api_key)
Classifier.add_asgi_middleware(
    RequestGuard,
    upload_path="/classify",
    tensor_paths=TENSOR_PATHS,
    binary_paths=BINARY_PATHS,
    file_field="images",
    max_upload_bytes=CONFIG.limits.max_request_bytes,
    max_body_bytes=CONFIG.limits.max_body_bytes,
    max_json_bytes=CONFIG.limits.max_json_bytes,
    body_timeout_s=CONFIG.body_timeout_s,
    body_deadline_s=CONFIG.timeout_s,
    max_buffered_bytes=CONFIG.max_buffered_bytes,
    activity=PLANE.activity,
)
# /classify over HTTP, parsed once, validated by the API's own input model (service/protocols/convzoo.py)
Classifier.add_asgi_middleware(
    convzoo.ClassifyRoute, plane=PLANE, spec=Classifier.apis["classify"].input_spec
)
# POST /v2/models/.../infer over HTTP, from the body the guard read (service/protocols/oip.py)
Classifier.add_asgi_middleware(InferRoute, plane=PLANE)
Classifier.add_asgi_middleware(ApiDescription, service=Classifier)  # /docs.json for the request's host
mount_ui(Classifier)  # the browser page at /ui/ (service/http/ui.py)
mount_oip(Classifier, PLANE)  # /v2/... (service/protocols/oip.py)
mount_tfserving(Classifier, PLANE)  # /v1/models/... (service/protocols/tfserving.py)
