"""The data plane (docs/design.md, "Data flow"): one object, ``DataPlane``, owns every request's
life, whichever protocol it came in by: resolve the model (``resolve``: the one parser of what a
client named), hold the version, decode or resize the images within the limits, batch and infer,
record the outcome and the timings, and turn any failure into one ``ServiceError``
(``service.serving.errors``). It also keeps the served models (``service.serving.registry``) in
step with the repository (``service.serving.watcher``). The protocol adapters
(``service.protocols``: ``convzoo``, the convzoo API; ``oip``, the Open Inference Protocol;
``tfserving``, TensorFlow Serving's REST API) only parse their wire format into an
``InferRequest`` and format the ``InferResponse``.

Decoding is bounded by memory, not only by pixels (``service.serving.images.open_upload``'s cost: the
bytes per pixel each mode really takes, 16-bit and alpha included): a request whose images would
need more than ``CONVZOO_MAX_IMAGE_DECODE_BYTES`` for one of them or
``CONVZOO_MAX_REQUEST_DECODE_BYTES`` for all is refused with 413 before anything is decoded, and
all decodes of a process together hold at most ``CONVZOO_DECODE_MEMORY_BYTES`` (``DecodeMemory``):
a costly request waits for memory, the others go on. Without decode threads (one CPU), images
decode in the model's thread, in the batch that takes their request, one at a time
(``DataPlane.decode``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from PIL import Image

from service import runtimes
from service.config import ServiceConfig
from service.repository import parse_model_spec, parse_version_spec
from service.serving.activity import Activity
from service.serving.batching import Deferred
from service.serving.errors import ServiceError, forget_frames, internal
from service.serving.images import RESAMPLING, InvalidImage, Resize, crop_box, open_upload, prepare_image
from service.serving.jsonbody import json_memory, json_memory_at_most
from service.serving.jsonbody import parse_json as parse_json_text
from service.serving.limits import check_count, check_decode_budget, public_limits
from service.serving.metrics import metrics
from service.serving.registry import Policy, Registry, ServedVersion, load_version, parse_models
from service.serving.requests import Files, InferRequest, InferResponse, ModelSpec, Upload
from service.serving.watcher import Watcher

T = TypeVar("T")
logger = logging.getLogger("bentoml.convzoo")
QUICK_DECODE_BYTES = 8 * 1024 * 1024
"""A request whose decoding needs at most this much memory (``images.open_upload``: any JPEG that
libjpeg shrinks while decoding, 12 MP phone photos included, or about 1.5 megapixels of PNG) may be
decoded on the event loop's thread when it is the worker's only request (``Deferred.quick``,
``Batcher(at_once=True)``); a larger one always goes to the model's thread, so that the loop keeps
answering probes and metrics while it decodes. On one Sapphire Rapids core (``prepare_image``,
generated images): a 12 MP JPEG 5.8 ms (a real phone photo ~15), a 1.1 MP PNG 12.2 ms (5.4 MiB),
a 4 MP PNG 43 ms (19 MiB), a 40 MP PNG 357 ms (191 MiB)."""

INLINE_JSON_BYTES = 16 * 1024
"""JSON texts up to this size are parsed on the event loop, not in a thread (``DataPlane.parse_json``):
a binary request's JSON header (~200 bytes) parses in microseconds, while the hand-over to a thread
and back cost 0.085 ms of CPU a request in process (benchmarks/README.md, "Where a request's time
goes")."""


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


class DataPlane:
    """The served models and the one way in to them, one per worker process (module docstring)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.registry: Registry | None = None
        self.watcher: Watcher | None = None
        self.activity = Activity()  # the HTTP requests in flight, which the batchers read
        # None: decode in the model's thread, in the batch (CONVZOO_DECODE_THREADS=0, the default on one CPU)
        self.decoders = anyio.CapacityLimiter(config.decode_threads) if config.decode_threads else None
        self.serial_decoder = threading.Lock()
        self.decode_memory = DecodeMemory(config.decode_memory_bytes)
        self.json_parser = anyio.CapacityLimiter(1)  # one JSON parse of the process at a time

    def start(self, default_folder: Path, default_tag: str, where: str = "CPU") -> None:
        """Serve ``default_tag`` (``name:version``, the export in ``default_folder``: BentoML's copy)
        and every version the policies want from the repository, then watch it (a failure of the
        default model stops the worker with one line; any other model is refused and logged).
        ``where``: the device, for the log line (``CPU``, or TensorFlow's GPU)."""
        name, version = parse_model_spec(default_tag)
        _, pinned = parse_model_spec(self.config.model)
        self.registry = Registry(default=name)
        default_policy = Policy("specific", versions=(pinned,)) if pinned else Policy()
        self.watcher = Watcher(
            self.registry,
            self.config,
            parse_models(self.config.models),
            default_policy,
            loader=functools.partial(load_version, requests_now=self.activity.count),
        )
        self.watcher.where = where
        try:
            self.watcher.serve(default_folder, name, int(version))
        except (runtimes.RuntimeUnavailable, ValueError) as error:
            print(f"convzoo: cannot serve {default_tag}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        self.watcher.poll()  # the rest of the repository, before the worker says it is ready
        self.watcher.start()

    def stop(self) -> None:
        """Stop watching the repository (the versions served stay served)."""
        if self.watcher is not None:
            self.watcher.stop()

    def resolve(self, spec: ModelSpec) -> ServedVersion:
        """The version ``spec`` names, the one parser of ``name[:version]`` (``latest`` or nothing:
        the highest served; a version is ``parse_version``'s ASCII digits): 400 for what is not a
        model name or a version, 404 naming what is served."""
        try:
            if spec.text is not None:
                if not isinstance(spec.text, str):
                    raise ValueError(
                        f"model must be a string NAME or NAME:VERSION, got {type(spec.text).__name__}"
                    )
                name, version = parse_model_spec(spec.text) if spec.text.strip() else (None, None)
            else:
                name, version = spec.name, parse_version_spec(spec.version)
        except ValueError as error:
            raise ServiceError(400, str(error)) from None
        name = name or self.registry.default
        if (served := self.registry.get(name, version)) is not None:
            return served
        if name not in self.registry.models:
            message = f"no model {name!r} is served"
        else:
            message = f"model {name!r} has no version {version!r} served"
        raise ServiceError(
            404, f"{message}; served: {self.registry.summary()}", served=self.registry.listing()
        )

    async def infer(self, request: InferRequest) -> InferResponse:
        """The life of one request (module docstring): the answer, or the ``ServiceError`` to answer
        with, counted in the metrics either way. A failure that is not the client's (a bug, the
        runtime failing) is logged with its traceback, counted as ``error`` and answered 500: the
        request never hangs."""
        started = time.perf_counter()
        served, count, failure = None, 0, None
        try:
            served = self.resolve(request.model)
            inputs = request.inputs
            if callable(inputs):
                inputs = await inputs(served)
                count = inputs.count
            else:
                count = inputs.count
                check_count(count, self.config.limits)
            with served.hold():
                if isinstance(inputs, Files):
                    images = await self.decode(served, inputs.uploads)
                else:
                    images = await self.pixels(served, inputs.array)
                probabilities = await served.infer(images)
        except Exception as error:  # a ServiceError, or a failure of the server's own (500)
            failure = self._failed(request.protocol, served, count, error)
        if failure is not None:  # raised here, not in the except clause: no context holding the request
            raise failure
        self._record(request.protocol, served, "ok", count, time.perf_counter() - started)
        return InferResponse(served, probabilities)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version of the repository the worker knows of: those served (``READY``)
        and, unless ``ready_only``, those refused (``UNAVAILABLE``, with the one-line reason)."""
        index = [
            {"name": s.name, "version": str(s.version), "state": "READY", "reason": ""}
            for s in self.registry.all()
        ]
        if not ready_only and self.watcher is not None:
            served = {(s.name, s.version) for s in self.registry.all()}
            index += [
                {"name": name, "version": str(version), "state": "UNAVAILABLE", "reason": reason}
                for (name, version), reason in sorted(dict(self.watcher.reasons).items())
                if (name, version) not in served
            ]
        return index

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        """``/metadata``'s answer: the version ``spec`` names, the limits, what is served."""
        from service.answers import public_metadata

        served = self.resolve(spec)
        extra = {"bentoml_tag": served.key, "limits": public_limits(self.config)}
        # describe() is public already (made once per version): only the rest is stripped here
        return {**served.describe(), **public_metadata({**extra, "served": self.registry.listing()})}

    def public_limits(self) -> dict[str, int]:
        """What ``/metadata`` says under ``limits``."""
        return public_limits(self.config)

    async def parse_json(self, text: bytes, convert: Callable[[Any], T]) -> T:
        """``convert(json.loads(text))``, within the limits: 413 when the parse could take more
        memory than a request's decoding may (``json_memory``: counted from the text before
        parsing); else in a thread, one parse of the process at a time, once that much of the
        process's decoding memory is free (``DecodeMemory``, shared with image decoding), which it
        holds until ``convert`` returned (``convert`` checks counts and shapes before it decodes
        anything, and what it returns is all that stays of the parsed objects). 400 for text that
        is not JSON or is nested too deeply.

        The parse is ``loads_in_steps``: ``json.loads`` would hold the GIL for the whole text, and
        the event loop would wait for it; in steps, it waits ~0.1 s at most for 15.8 MiB of pixel
        lists (``CONVZOO_MAX_JSON_BYTES`` bounds the text; README, "Reliability").

        A text of at most ``INLINE_JSON_BYTES`` (the JSON header of a binary request, a small JSON
        request) is parsed right here, on the event loop: microseconds, less than the hand-over
        to a thread and back would cost; and not counted first when even its dearest reading
        (``json_memory_at_most``) is within the limit."""
        limits = self.config.limits
        limit = min(limits.max_request_decode_bytes, self.decode_memory.capacity)
        if len(text) <= INLINE_JSON_BYTES and json_memory_at_most(len(text)) <= limit:
            return parse_json_text(text, convert)  # within the limit whatever it holds: not counted
        cost = json_memory(text)
        if cost > limit:
            raise ServiceError(
                413,
                f"parsing this JSON ({len(text)} bytes) may take {cost} bytes of memory; one request "
                f"may take {limit} (CONVZOO_MAX_REQUEST_DECODE_BYTES, CONVZOO_DECODE_MEMORY_BYTES): "
                "send fewer values, or the tensor as binary data",
            )
        if len(text) <= INLINE_JSON_BYTES:
            return parse_json_text(text, convert)
        async with self.decode_memory.hold(cost):
            return await anyio.to_thread.run_sync(parse_json_text, text, convert, limiter=self.json_parser)

    async def decode(self, served: ServedVersion, uploads: list[Upload]) -> np.ndarray | Deferred:
        """Encoded images -> uint8 ``[n, height, width, 3]`` at ``served``'s input size, as
        ``/classify`` decodes them (``served.infer`` takes either form of the answer); 413 over the
        limits, 400 naming every bad file.

        With decode threads (several CPUs), the images decode in them, in parallel, now. Without
        (one CPU), the answer is the decoding itself (``Deferred``), which the model's thread does
        just before the batch that takes this request, one image of the process at a time: the
        event loop only answers HTTP, and the core runs a batch's decoding and its model call in
        one go (benchmarks/README.md, "The HTTP path")."""
        limits = self.config.limits
        opened = [open_upload(upload.data, served.resize, limits) for upload in uploads]
        costs = [cost for cost, _ in opened]
        check_decode_budget(uploads, costs, limits)
        if self.decoders is None:
            make = functools.partial(self._decode_serially, served, uploads, opened)
            return Deferred(len(uploads), make, quick=sum(costs) <= QUICK_DECODE_BYTES)
        prepared = await asyncio.gather(
            *(self._prepare(served, i, u, *o) for i, (u, o) in enumerate(zip(uploads, opened, strict=True)))
        )
        return _stack_or_refuse(prepared, len(uploads))

    async def pixels(self, served: ServedVersion, images: np.ndarray) -> np.ndarray:
        """uint8 ``[n, h, w, 3]`` of any size -> ``served``'s input size (cropped and resized as an
        upload is; in a thread when that is work). The count and the pixels per image were checked
        where the shape was read (``service.protocols.tensors.pixel_array``)."""
        height, width = images.shape[1:3]
        resize = served.resize
        if (height, width) == (resize.height, resize.width):
            return images
        return await anyio.to_thread.run_sync(resize_pixels, images, resize)

    async def _prepare(
        self, served: ServedVersion, index: int, upload: Upload, cost: int, image: Image.Image | None
    ) -> Any:
        """``_decode_one`` in a decode thread, once ``cost`` bytes of the process's decoding memory
        are free."""
        async with self.decode_memory.hold(cost):
            return await anyio.to_thread.run_sync(
                self._decode_one, served, index, upload, image, limiter=self.decoders
            )

    def _decode_serially(
        self, served: ServedVersion, uploads: list[Upload], opened: list[tuple[int, Image.Image | None]]
    ) -> np.ndarray:
        """``decode``'s work without decode threads, in the model's thread (``Deferred``): the
        images one after the other, one image of the whole process at a time (so the decoding
        memory held is at most one image's, within ``CONVZOO_DECODE_MEMORY_BYTES``)."""
        prepared = []
        for index, (upload, (_, image)) in enumerate(zip(uploads, opened, strict=True)):
            with self.serial_decoder:
                prepared.append(self._decode_one(served, index, upload, image))
        return _stack_or_refuse(prepared, len(uploads))

    def _decode_one(
        self, served: ServedVersion, index: int, upload: Upload, image: Image.Image | None
    ) -> Any:
        """One upload decoded, cropped and resized (its time in ``convzoo_decode_duration_seconds``),
        or its refusal ``{"index", "file", "reason"}``."""
        filename = upload.filename or f"images[{index}]"
        started = time.perf_counter()
        try:
            array = prepare_image(upload.data, filename, served.resize, self.config.limits, image)
        except InvalidImage as error:
            return {"index": index, "file": error.filename, "reason": error.reason}
        served.decode_seconds.observe(time.perf_counter() - started)
        return array

    def _record(
        self, protocol: str, served: ServedVersion | None, outcome: str, images: int, seconds: float | None
    ) -> None:
        """One request answered: ``convzoo_requests_total``, ``convzoo_images_total`` and, when it
        succeeded, its time and image count."""
        if outcome == "ok" and served is not None:
            served.count_ok(protocol, images, seconds or 0.0)
            return
        m = metrics()
        name, version = (served.name, str(served.version)) if served else ("", "")
        m.requests.labels(name, version, protocol, outcome).inc()
        if images:
            m.images.labels(name, version, outcome).inc(images)

    def _failed(
        self, protocol: str, served: ServedVersion | None, images: int, error: Exception
    ) -> ServiceError:
        """A request that failed, counted under its outcome, as the ``ServiceError`` to answer with."""
        if isinstance(error, ServiceError):
            self._record(protocol, served, error.outcome, images, None)
            failure = ServiceError(error.status, error.message, **error.details)
        else:
            logger.error("%s request failed: %r", protocol, error, exc_info=error)
            self._record(protocol, served, "error", images, None)
            failure = internal(error)
        forget_frames(error)
        return failure


def resize_pixels(images: np.ndarray, resize: Resize) -> np.ndarray:
    """Each image cropped to the model's aspect ratio and resized as ``prepare_image`` does."""
    out = np.empty((len(images), resize.height, resize.width, 3), np.uint8)
    for i, pixels in enumerate(images):
        image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        box = crop_box(image.height, image.width, resize) if resize.crop_to_aspect_ratio else None
        out[i] = np.asarray(
            image.resize((resize.width, resize.height), resample=RESAMPLING[resize.interpolation], box=box)
        )
    return out


def _stack_or_refuse(prepared: list[Any], count: int) -> np.ndarray:
    """The decoded images stacked, or 400 naming every refused one (``{"index", "file", "reason"}``)."""
    refused = [p for p in prepared if isinstance(p, dict)]
    if refused:
        raise ServiceError(
            400, f"{len(refused)} of {count} images refused; nothing was classified", files=refused
        )
    return np.stack(prepared)
