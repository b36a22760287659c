"""What every protocol of the service shares (docs/design.md, "Serving a repository"): the served
models (``service.registry``) kept in step with the repository (``service.watcher``), and turning
what a client sent (encoded files, or uint8 pixels of any size) into model-ready arrays within the
limits. The protocol modules (``service.service``: the convzoo API; ``service.oip``: the Open
Inference Protocol; ``service.tfserving``: TensorFlow Serving's REST API) only translate requests,
answers and ``ApiError`` into their own words.

Decoding is bounded by memory, not only by pixels (``service.images.decode_cost``: the bytes per
pixel each mode really takes, 16-bit and alpha included): a request whose images would need more
than ``CONVZOO_MAX_IMAGE_DECODE_BYTES`` for one of them or ``CONVZOO_MAX_REQUEST_DECODE_BYTES`` for
all is refused with 413 before anything is decoded, and all decodes of a process together hold at
most ``CONVZOO_DECODE_MEMORY_BYTES`` (``DecodeMemory``): a costly request waits for memory, the
others go on. Without decode threads (one CPU), images decode in the model's thread, in the batch
that takes their request, one at a time (``Core.decode``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import reprlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from PIL import Image

from service import runtimes
from service.batching import Deferred
from service.config import ServiceConfig
from service.images import RESAMPLING, InvalidImage, Resize, crop_box, open_upload, prepare_image
from service.metrics import metrics, outcome_of
from service.registry import Policy, Registry, ServedVersion, UnknownModel, load_version, parse_models
from service.repository import parse_model_spec, parse_version
from service.watcher import Watcher

logger = logging.getLogger("bentoml.convzoo")
QUICK_DECODE_BYTES = 8 * 1024 * 1024
"""A request whose decoding needs at most this much memory (``images.decode_cost``: any JPEG that
libjpeg shrinks while decoding, 12 MP phone photos included, or about 1.5 megapixels of PNG) may be
decoded on the event loop's thread when it is the worker's only request (``Deferred.quick``,
``Batcher(at_once=True)``); a larger one always goes to the model's thread, so that the loop keeps
answering probes and metrics while it decodes. On one Sapphire Rapids core (``prepare_image``,
generated images): a 12 MP JPEG 5.8 ms (a real phone photo ~15), a 1.1 MP PNG 12.2 ms (5.4 MiB),
a 4 MP PNG 43 ms (19 MiB), a 40 MP PNG 357 ms (191 MiB)."""


T = TypeVar("T")
SHOWN = reprlib.Repr()
"""How an error message shows a value a client sent: short, however large or deep it is."""
SHOWN.maxlevel, SHOWN.maxlist, SHOWN.maxdict, SHOWN.maxstring, SHOWN.maxother = 3, 6, 4, 40, 40


def shown(value: Any) -> str:
    """``value`` as an error message shows it (``SHOWN``)."""
    return SHOWN.repr(value)


class ApiError(Exception):
    """A request refused: HTTP ``status``, the reason in words a user understands, and details
    (``files``: the refused images, each ``{"index", "file", "reason"}``)."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    @property
    def outcome(self) -> str:
        """The metrics' outcome: ``invalid_image`` for refused files, else by status."""
        return (
            "invalid_image" if self.status == 400 and self.details.get("files") else outcome_of(self.status)
        )


@dataclass(frozen=True)
class Upload:
    """One encoded image: the client's filename (or a name for it) and its bytes."""

    filename: str
    data: bytes


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


class Core:
    """The served models and the way in to them, one per worker process."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.registry: Registry | None = None
        self.watcher: Watcher | None = None
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
        try:
            served = load_version(default_folder, name, int(version), self.config)
        except (runtimes.RuntimeUnavailable, ValueError) as error:
            print(f"convzoo: cannot serve {default_tag}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        self.registry.add(served)
        metrics().model_loads.labels(name, str(version), "loaded").inc()
        choice = served.choice
        logger.info(
            "serving %s with %s %s on %s (%s)",
            served.key,
            choice.runtime,
            choice.precision,
            where,
            choice.reason,
        )
        default_policy = Policy("specific", versions=(pinned,)) if pinned else Policy()
        self.watcher = Watcher(self.registry, self.config, parse_models(self.config.models), default_policy)
        self.watcher.poll()  # the rest of the repository, before the worker says it is ready
        self.watcher.start()

    def model(self, name: str | None = None, version: int | str | None = None) -> ServedVersion:
        """The version asked for (``version`` as a client wrote it: ``parse_version``'s ASCII
        digits, else 400); 404 naming what is served."""
        if version is not None:
            try:
                version = parse_version(version)
            except ValueError as error:
                raise ApiError(400, str(error)) from None
        try:
            return self.registry.get(name, version)
        except UnknownModel as error:
            raise ApiError(404, str(error), served=self.registry.listing()) from None

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
        lists (``CONVZOO_MAX_JSON_BYTES`` bounds the text; README, "Reliability")."""
        limits = self.config.limits
        cost = json_memory(text)
        limit = min(limits.max_request_decode_bytes, self.decode_memory.capacity)
        if cost > limit:
            raise ApiError(
                413,
                f"parsing this JSON ({len(text)} bytes) may take {cost} bytes of memory; one request "
                f"may take {limit} (CONVZOO_MAX_REQUEST_DECODE_BYTES, CONVZOO_DECODE_MEMORY_BYTES): "
                "send fewer values, or the tensor as binary data",
            )
        async with self.decode_memory.hold(cost):
            return await anyio.to_thread.run_sync(_parse_json, text, convert, limiter=self.json_parser)

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
        check_count(len(uploads), limits)
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
        upload is; in a thread when that is work)."""
        limits = self.config.limits
        count, height, width = images.shape[:3]
        check_count(count, limits)
        resize = served.resize
        if (height, width) == (resize.height, resize.width):
            return images
        if height * width > limits.max_pixels:
            raise ApiError(
                413,
                f"{width}x{height} pixels per image; the limit is {limits.max_pixels} (CONVZOO_MAX_PIXELS)",
            )
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

    def record(
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

    def failed(self, protocol: str, served: ServedVersion | None, images: int, error: Exception) -> ApiError:
        """A request that failed, counted under its outcome, as the ``ApiError`` to answer with.
        A failure that is not the client's (a bug, the runtime failing) is logged with its
        traceback, counted as ``error`` and answered 500: the request never hangs."""
        if isinstance(error, ApiError):
            self.record(protocol, served, error.outcome, images, None)
            failure = ApiError(error.status, error.message, **error.details)
        else:
            logger.error("%s request failed: %r", protocol, error, exc_info=error)
            self.record(protocol, served, "error", images, None)
            what = type(error).__name__
            failure = ApiError(500, f"the server failed on this request ({what}); see its log")
        forget_frames(error)
        return failure

    def public_limits(self) -> dict[str, int]:
        """What ``/metadata`` says under ``limits``."""
        config, limits = self.config, self.config.limits
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


def forget_frames(error: BaseException) -> None:
    """Drop the tracebacks of ``error`` and the exceptions it chains: their frames hold the request
    (its body, the parsed JSON), and the handler that caught it holds the error, a reference cycle
    that only a full garbage collection frees, which ``gc.freeze`` and the raised thresholds of
    ``service.service`` make rare (a refused 59 MiB JSON body kept 2.6 GB)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        if error.__cause__ is not None:
            forget_frames(error.__cause__)
        error = error.__context__


JSON_COSTS = {b"[": 96, b"{": 240, b",": 40, b":": 40, b'"': 32}
"""Bytes of Python objects that each of these characters of a JSON text can stand for, at most,
as ``json.loads`` builds them (CPython 3.11, 64-bit): a list (56 bytes, pointers over-allocated)
and its first element, a dict (232 bytes up to 5 keys), an element or a dict's value (its pointer
and a number object of up to 32 bytes), half of a string (49 bytes and its pointer). Counted in
the text, strings included, so that it over- and never under-counts (tests/test_json_limits.py
measures shapes against it)."""


def json_memory(text: bytes) -> int:
    """An upper bound of the memory ``json.loads(text)`` takes, and of what is decoded from it
    (base64 strings: three quarters of their size again): three times the text, plus ``JSON_COSTS`` per
    structural character. C-speed counts; ~16 ms for 16 MiB."""
    return 3 * len(text) + 4096 + sum(cost * text.count(char) for char, cost in JSON_COSTS.items())


WALKED_DEPTH = 3
"""JSON containers this shallow (the request, its list of instances or inputs, an image) may be
read an element at a time by ``loads_in_steps``; deeper values in one call of the C parser each."""
STEP_BYTES = 4096
"""An element of at least this much text is a step of its own (``loads_in_steps``)."""
MAX_SMALL_STEPS = 64
"""Smaller elements a walked container may have before it is parsed again in one call."""
_SCAN = json.JSONDecoder().scan_once
_SPACE = re.compile(r"[ \t\n\r]*")


def loads_in_steps(text: bytes) -> Any:
    """``json.loads(text)``, the same value and the same errors, read in steps: a container of the
    first ``WALKED_DEPTH`` levels whose first element is large (``STEP_BYTES`` of text) is walked in
    Python, each element parsed by json's C scanner; any other value is one call of it (a
    container whose elements turn out small, after ``MAX_SMALL_STEPS`` of them, is parsed again
    in one call: Python steps stay few, ~1 per 4 KiB, and the work at most doubles per level).
    ``json.loads`` holds the GIL for the whole text (0.9 s for 15.8 MiB of pixel lists on this
    machine); between two steps here another thread, the event loop's, gets it back."""
    string = text.decode(json.detect_encoding(text), "surrogatepass")
    value, end = _value(string, 0, 0)
    end = _SPACE.match(string, end).end()
    if end != len(string):
        raise json.JSONDecodeError("Extra data", string, end)
    return value


def _scan(string: str, at: int) -> tuple[Any, int]:
    try:
        return _SCAN(string, at)
    except StopIteration as stop:
        raise json.JSONDecodeError("Expecting value", string, stop.value) from None


def _value(string: str, at: int, depth: int) -> tuple[Any, int]:
    at = _SPACE.match(string, at).end()
    opener = string[at : at + 1]
    if depth >= WALKED_DEPTH or opener not in ("[", "{"):
        return _scan(string, at)
    walked = (_array if opener == "[" else _object)(string, at, depth)
    return walked if walked is not None else _scan(string, at)


def _array(string: str, start: int, depth: int) -> tuple[list, int] | None:
    """The array at ``start`` walked element by element; None when its elements are small."""
    at = _SPACE.match(string, start + 1).end()
    if string.startswith("]", at):
        return [], at + 1
    items, small = [], 0
    while True:
        value, end = _value(string, at, depth + 1)
        small += end - at < STEP_BYTES
        if small > (0 if not items else MAX_SMALL_STEPS):
            return None
        items.append(value)
        at = _SPACE.match(string, end).end()
        if string.startswith(",", at):
            at += 1
        elif string.startswith("]", at):
            return items, at + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", string, at)


def _object(string: str, start: int, depth: int) -> tuple[dict, int] | None:
    """The object at ``start`` walked member by member; None when its values are small."""
    at = _SPACE.match(string, start + 1).end()
    members: dict[str, Any] = {}
    if string.startswith("}", at):
        return members, at + 1
    small = 0
    while True:
        at = _SPACE.match(string, at).end()
        if not string.startswith('"', at):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", string, at)
        key, at = _scan(string, at)
        at = _SPACE.match(string, at).end()
        if not string.startswith(":", at):
            raise json.JSONDecodeError("Expecting ':' delimiter", string, at)
        members[key], end = _value(string, at + 1, depth + 1)
        small += end - at < STEP_BYTES
        if small > MAX_SMALL_STEPS:
            return None
        at = _SPACE.match(string, end).end()
        if string.startswith(",", at):
            at += 1
        elif string.startswith("}", at):
            return members, at + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", string, at)


def _parse_json(text: bytes, convert: Callable[[Any], T]) -> T:
    """``Core.parse_json``'s work in its thread."""
    problem = None
    try:
        tree = loads_in_steps(text)
    except RecursionError:
        problem = "the JSON is nested too deeply"
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        problem = f"the request is not valid JSON ({error})"
    if problem is not None:  # raised here, not in the except clause: no context holding the text
        raise ApiError(400, problem)
    try:
        return convert(tree)
    except RecursionError:
        problem = "the JSON is nested too deeply"
    raise ApiError(400, problem)


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


def check_decode_budget(uploads: list[Upload], costs: list[int], limits: Any) -> None:
    """413 for a request whose images would take more decoding memory than allowed."""
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
        raise ApiError(
            413, "an image takes more memory to decode than one image may (decode budget)", files=over
        )
    if sum(costs) > limits.max_request_decode_bytes:
        raise ApiError(
            413,
            f"decoding these {len(uploads)} images takes {sum(costs)} bytes; the limit of one request "
            f"is {limits.max_request_decode_bytes} (CONVZOO_MAX_REQUEST_DECODE_BYTES): send fewer or "
            "smaller images",
        )


def check_count(count: int, limits: Any) -> None:
    """400 for a request without images, 413 for more than ``CONVZOO_MAX_IMAGES``."""
    if count < 1:
        raise ApiError(400, "no images in the request: send at least one")
    if count > limits.max_images:
        raise ApiError(
            413, f"{count} images in one request; the limit is {limits.max_images} (CONVZOO_MAX_IMAGES)"
        )


def pixel_array(
    shape: Any,
    limits: Any,
    *,
    data: Any = None,
    buffer: bytes | memoryview | None = None,
    name: str = "images",
) -> np.ndarray:
    """uint8 images ``[n, h, w, 3]`` from a tensor a client declared (``shape``) and sent, either
    as raw bytes (``buffer``) or as numbers (``data``, flat or nested); 413 when the shape is over
    the limits, 400 when the shape, the byte count or a value is wrong, checked before anything
    the size of the images is allocated."""
    if not (
        isinstance(shape, list | tuple)
        and len(shape) == 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ApiError(400, f"input '{name}' must have the shape [n, height, width, 3], got {shown(shape)}")
    count, height, width, channels = shape
    if channels != 3 or 0 in (count, height, width):
        raise ApiError(
            400,
            f"input '{name}' must have the shape [n, height, width, 3], none of them 0; got {shape}",
        )
    check_count(count, limits)
    if height * width > limits.max_pixels:
        raise ApiError(
            413, f"{width}x{height} pixels per image; the limit is {limits.max_pixels} (CONVZOO_MAX_PIXELS)"
        )
    size = count * height * width * 3
    if buffer is not None:
        if len(buffer) != size:
            raise ApiError(
                400,
                f"input '{name}' of shape {list(shape)} takes {size} bytes as UINT8; {len(buffer)} were sent",
            )
        return np.frombuffer(buffer, np.uint8).reshape(shape)
    return _numbers_to_pixels(data, list(shape), size, name)


def _numbers_to_pixels(data: Any, shape: list[int], size: int, name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ApiError(400, f"input '{name}' has no data: send its values as a list (or as binary data)")
    if len(data) not in (size, shape[0]):  # flat, or nested by image: anything else is wrong
        raise ApiError(400, f"input '{name}' of shape {shape} has {size} values; the data does not match")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise ApiError(
            400, f"input '{name}': the values do not form a regular array (ragged lists?)"
        ) from None
    if array.size != size:
        raise ApiError(400, f"input '{name}' of shape {shape} has {size} values; {array.size} were sent")
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
        raise ApiError(400, f"input '{name}' must hold integers 0..255 (UINT8)")
    return array.astype(np.uint8).reshape(shape)


def _stack_or_refuse(prepared: list[Any], count: int) -> np.ndarray:
    """The decoded images stacked, or 400 naming every refused one (``{"index", "file", "reason"}``)."""
    refused = [p for p in prepared if isinstance(p, dict)]
    if refused:
        raise ApiError(
            400, f"{len(refused)} of {count} images refused; nothing was classified", files=refused
        )
    return np.stack(prepared)
