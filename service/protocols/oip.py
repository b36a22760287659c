"""The Open Inference Protocol (v2) over HTTP, under ``/v2``, as Triton, OpenVINO Model Server,
KServe and MLServer speak it (README, "Protocols"; contract 3 in docs/design.md). A thin adapter
over ``service.serving.dataplane``: it translates requests, answers and errors, and nothing else.

- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready`` (the health routes need no API key);
- ``GET /v2/models/{name}[/versions/{v}]``: the model's metadata (inputs, outputs, datatypes,
  shapes, the versions served; ``parameters`` holds the labels and convzoo's metadata);
- ``GET /v2/models/{name}[/versions/{v}]/ready``: 200 when served, 404 otherwise;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: one of two inputs, named as in the SavedModel's
  signatures, ``image_bytes`` (``BYTES [n]``: encoded JPEG/PNG/WebP/BMP/GIF files, decoded exactly
  as ``/classify`` decodes them) or ``images`` (``UINT8 [n, h, w, 3]``, any height and width:
  cropped and resized as an upload is); one output, ``probabilities`` (``FP32 [n, classes]``).
  JSON tensors and the binary data extension (``Inference-Header-Content-Length``: the JSON header,
  then each binary tensor in input order; ``BYTES`` elements as 4-byte little-endian length +
  bytes) both work, for inputs and for the output (``"binary_data": true`` on the output, or
  ``binary_data_output`` in the request's parameters, as tritonclient sends it). ``BYTES`` in JSON
  are strings: base64 when the input's parameters say ``"content_type": "base64"`` (MLServer's
  convention), else the string's UTF-8 bytes (Triton's).

Errors are ``{"error": "..."}``: 400 for a bad request (JSON or binary framing, an input's name,
datatype, shape or byte count), 404 for a model or version not served (naming those that are), 413
over the limits (checked from the declared shape and sizes, before anything is allocated).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from service.http.asgi import ascii_int
from service.http.forms import BODY
from service.protocols.tensors import pixel_array, shown
from service.serving.dataplane import DataPlane
from service.serving.errors import ServiceError, answers_errors, send_error
from service.serving.limits import check_count
from service.serving.registry import ServedVersion
from service.serving.requests import Files, InferRequest, ModelSpec, Pixels, Upload

PATH = "/v2"
MODEL_PATH = re.compile(r"^(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer)?$")
BYTES_INPUT, PIXELS_INPUT, OUTPUT = "image_bytes", "images", "probabilities"
SERVER = {"name": "convzoo", "extensions": ["binary_tensor_data", "model_repository"]}
COMPACT = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(..., separators=(",", ":"))``, without making its encoder per answer."""


def mount_oip(service: Any, plane: DataPlane) -> None:
    """Serve the protocol at ``/v2`` from ``service`` (a ``bentoml.Service``; ``GET /v2`` itself
    as an exact route, which the mount alone would redirect to ``/v2/``)."""
    service.mount_asgi_app(oip_app(plane), path=PATH, name="oip")
    service.add_route(Route(PATH, server, methods=["GET"]))


async def server(request: Request) -> Response:
    """The server's metadata (``GET /v2``)."""
    from service.http.openapi import convzoo_version

    return JSONResponse({**SERVER, "version": convzoo_version(None)})


def oip_app(plane: DataPlane) -> Router:
    @answers_errors
    async def index(request: Request) -> Response:
        """``POST /v2/repository/index`` (the model repository extension): body empty or
        ``{"ready": true}`` (only what is served)."""
        body = await request.body()
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError:
            raise ServiceError(
                400, 'the body must be empty or a JSON object such as {"ready": true}'
            ) from None
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise ServiceError(400, 'the body must be empty or a JSON object such as {"ready": true}')
        return JSONResponse(plane.repository_index(ready_only=options.get("ready", False)))

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if plane.registry and plane.registry.models else 503)

    @answers_errors
    async def model(request: Request) -> Response:
        match = MODEL_PATH.match(request.path_params["rest"])
        if match is None:
            raise ServiceError(404, f"no such route: {request.url.path}")
        tail = match["tail"] or ""
        if (tail == "/infer") != (request.method == "POST"):
            raise ServiceError(405, f"{request.method} is not allowed on {request.url.path}")
        spec = ModelSpec(name=match["name"], version=match["version"])
        if tail == "/infer":
            return await infer(plane, request, spec)
        try:
            served = plane.resolve(spec)
        except ServiceError as error:
            raise ServiceError(error.status, error.message) from None
        if tail == "/ready":
            return Response(status_code=200)
        return JSONResponse(model_metadata(plane, served, match["version"] is None))

    return Router(
        routes=[
            Route("/", server, methods=["GET"]),
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/models/{rest:path}", model, methods=["GET", "POST"]),
            Route("/repository/index", index, methods=["POST"]),
        ]
    )


def model_metadata(plane: DataPlane, served: ServedVersion, all_versions: bool) -> dict[str, Any]:
    """The protocol's model metadata (with convzoo's own under ``parameters``)."""
    versions = sorted(plane.registry.models.get(served.name, {})) if all_versions else [served.version]
    return {
        "name": served.name,
        "versions": [str(v) for v in versions],
        "platform": f"convzoo_{served.choice.runtime}",
        "inputs": [
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(served.labels)]}],
        "parameters": {"labels": served.labels, "convzoo": served.describe()},
    }


async def infer(plane: DataPlane, request: Request, spec: ModelSpec) -> Response:
    """``/infer`` as a Starlette endpoint (``oip_app`` on its own; under ``bentoml serve``,
    ``InferRoute`` answers first)."""
    body = await request.body()
    content, headers = await infer_answer(
        plane, spec, body, request.headers.get("inference-header-content-length")
    )
    response = Response(content)
    response.raw_headers = headers
    return response


async def infer_answer(
    plane: DataPlane, spec: ModelSpec, body: bytes, header_length: str | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``/infer``'s answer (its body and headers): the body parsed into the data plane's request
    (inside its life cycle), the answer formatted; ``ServiceError`` when refused."""
    parsed: dict[str, Any] = {}

    async def inputs(served: ServedVersion) -> Files | Pixels:
        header, binary = _split(body, header_length, plane.config)
        limits = plane.config.limits
        tensors, parsed["binary"], parsed["id"] = await plane.parse_json(
            header, lambda tree: _parse(tree, binary, limits)
        )
        ((input_name, tensor),) = tensors.items()
        return Files(tensor) if input_name == BYTES_INPUT else Pixels(tensor)

    answer = await plane.infer(InferRequest("v2", spec, inputs))
    return _answer(answer.served, answer.probabilities, parsed["binary"], parsed["id"])


INFER_PREFIX = PATH + "/models/"


class InferRoute:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` over HTTP, answered from the body that
    ``service.http.body.RequestGuard`` already read (``BODY``), in front of BentoML's request
    context and Starlette's routing, the Starlette request and response objects (as
    ``service.protocols.convzoo.ClassifyRoute`` answers ``/classify``; benchmarks/README.md,
    "Where a request's time goes"). The same answers as the ``/v2`` mount's endpoint, which
    answers every other request under ``/v2`` (and ``/infer`` without the guard in front)."""

    def __init__(self, app: Any, *, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = scope.get(BODY) if scope["type"] == "http" and scope["method"] == "POST" else None
        path = scope["path"] if body is not None else ""
        match = MODEL_PATH.match(path[len(INFER_PREFIX) :]) if path.startswith(INFER_PREFIX) else None
        if match is None or match["tail"] != "/infer":
            await self.app(scope, receive, send)
            return
        header_length = next(
            (
                v.decode("latin-1")
                for k, v in scope["headers"]
                if k.lower() == b"inference-header-content-length"
            ),
            None,
        )
        spec = ModelSpec(name=match["name"], version=match["version"])
        try:
            content, headers = await infer_answer(self.plane, spec, body, header_length)
        except ServiceError as error:
            await send_error(send, error)
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _split(body: bytes, header_length: str | None, config: Any) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (binary data extension); 413 for a JSON
    header over ``CONVZOO_MAX_JSON_BYTES`` (``RequestGuard`` bounds a body without binary data)."""
    if header_length is None:
        return body, memoryview(b"")
    length = ascii_int(header_length)
    if length is None or length > len(body):
        raise ServiceError(
            400,
            f"Inference-Header-Content-Length {ascii(header_length[:30])} is not a length within the "
            f"body ({len(body)} bytes)",
        )
    if length > config.limits.max_json_bytes:
        raise ServiceError(
            413,
            f"a JSON header of {length} bytes exceeds the limit of {config.limits.max_json_bytes} bytes "
            "(CONVZOO_MAX_JSON_BYTES)",
        )
    return body[:length], memoryview(body)[length:]


def _parse(request: Any, binary: memoryview, limits: Any) -> tuple[dict[str, Any], bool, str | None]:
    """({input name: list of Upload | uint8 array}, whether the output goes binary, the id) of the
    parsed JSON header."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ServiceError(400, "the request must be a JSON object with a list of 'inputs'")
    if len(request["inputs"]) != 1:
        raise ServiceError(
            400,
            f"send one input: '{BYTES_INPUT}' (BYTES, encoded files) or '{PIXELS_INPUT}' (UINT8 pixels)",
        )
    inputs: dict[str, Any] = {}
    offset = 0
    for tensor in request["inputs"]:
        if not isinstance(tensor, dict):
            raise ServiceError(400, "each input must be a JSON object (name, datatype, shape, data)")
        chunk, offset = _binary_part(tensor, binary, offset)
        inputs[tensor.get("name")] = _input(tensor, chunk, limits)
    if offset != len(binary):
        raise ServiceError(400, f"{len(binary) - offset} bytes of binary data after the last input's")
    return inputs, _binary_output(request), _request_id(request)


def _binary_part(tensor: dict, binary: memoryview, offset: int) -> tuple[memoryview | None, int]:
    size = (
        (tensor.get("parameters") or {}).get("binary_data_size")
        if isinstance(tensor.get("parameters"), dict)
        else None
    )
    if size is None:
        return None, offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise ServiceError(
            400,
            f"input {shown(tensor.get('name'))}: binary_data_size {shown(size)} does not fit the "
            f"{len(binary) - offset} bytes of binary data left",
        )
    return binary[offset : offset + size], offset + size


def _input(tensor: dict, chunk: memoryview | None, limits: Any) -> Any:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name not in (BYTES_INPUT, PIXELS_INPUT):
        raise ServiceError(
            400, f"unknown input {shown(name)}: send '{BYTES_INPUT}' (BYTES) or '{PIXELS_INPUT}' (UINT8)"
        )
    wanted = "BYTES" if name == BYTES_INPUT else "UINT8"
    if datatype != wanted:
        raise ServiceError(400, f"input '{name}' must be {wanted}, got {shown(datatype)}")
    if name == PIXELS_INPUT:
        return pixel_array(shape, limits, data=tensor.get("data"), buffer=chunk, name=name)
    return _byte_strings(tensor, shape, chunk, limits)


def _byte_strings(tensor: dict, shape: Any, chunk: memoryview | None, limits: Any) -> list[Upload]:
    """The ``image_bytes`` elements as uploads named ``image_bytes[i]``."""
    if not (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and (len(shape) == 1 or shape[1] == 1)
    ):
        raise ServiceError(
            400, f"input '{BYTES_INPUT}' must have the shape [n] (or [n, 1]), got {shown(shape)}"
        )
    count = shape[0]
    check_count(count, limits)
    elements = _unpack_bytes(chunk, count) if chunk is not None else _json_bytes(tensor, count)
    return [Upload(f"{BYTES_INPUT}[{i}]", data) for i, data in enumerate(elements)]


def _unpack_bytes(chunk: memoryview, count: int) -> list[bytes]:
    """``count`` elements of 4-byte little-endian length + bytes, exactly filling ``chunk``."""
    elements, offset = [], 0
    for i in range(count):
        if offset + 4 > len(chunk):
            raise ServiceError(400, f"'{BYTES_INPUT}': the binary data ends before element {i}'s length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise ServiceError(
                400, f"'{BYTES_INPUT}' element {i} claims {length} bytes; {len(chunk) - offset} are left"
            )
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != len(chunk):
        raise ServiceError(400, f"'{BYTES_INPUT}': {len(chunk) - offset} bytes after its {count} elements")
    return elements


def _json_bytes(tensor: dict, count: int) -> list[bytes]:
    data = tensor.get("data")
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # [[...]]: nested once
    if not isinstance(data, list) or len(data) != count or not all(isinstance(d, str) for d in data):
        raise ServiceError(400, f"input '{BYTES_INPUT}' of shape [{count}] needs {count} strings in 'data'")
    parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    if parameters.get("content_type") == "base64":
        try:
            return [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError):
            raise ServiceError(400, f"input '{BYTES_INPUT}': an element is not valid base64") from None
    return [d.encode("utf-8", "surrogatepass") for d in data]


def _binary_output(request: dict) -> bool:
    parameters = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    outputs = request.get("outputs")
    if outputs is None:
        return bool(parameters.get("binary_data_output", False))
    if not isinstance(outputs, list) or any(
        not isinstance(o, dict) or o.get("name") != OUTPUT for o in outputs
    ):
        raise ServiceError(400, f"the only output is '{OUTPUT}'")
    wanted = [
        (o.get("parameters") or {}).get("binary_data")
        for o in outputs
        if isinstance(o.get("parameters"), dict)
    ]
    return bool(wanted and wanted[0]) or bool(parameters.get("binary_data_output", False))


def _request_id(request: dict) -> str | None:
    identifier = request.get("id")
    return identifier if isinstance(identifier, str) else None


def _answer(
    served: ServedVersion, probabilities: np.ndarray, binary: bool, request_id: str | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The answer's body and headers (as Starlette's ``Response`` would write them)."""
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
    raw = np.ascontiguousarray(probabilities, dtype="<f4").tobytes() if binary else b""
    if binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = probabilities.astype(np.float32).ravel().tolist()
    answer: dict[str, Any] = {
        "model_name": served.name,
        "model_version": str(served.version),
        "outputs": [output],
    }
    if request_id is not None:
        answer["id"] = request_id
    header = COMPACT.encode(answer).encode()
    if not binary:
        return header, [(b"content-length", b"%d" % len(header)), (b"content-type", b"application/json")]
    return header + raw, [
        (b"inference-header-content-length", b"%d" % len(header)),
        (b"content-length", b"%d" % (len(header) + len(raw))),
        (b"content-type", b"application/octet-stream"),
    ]
