"""TensorFlow Serving's REST API, under ``/v1``, as TF Serving documents it (``api_rest.md``;
README, "Protocols"; contract 3 in docs/design.md). A thin adapter over ``service.serving.dataplane``: a
request that TF Serving answers for our SavedModel gets the same answer here (one export, one
request, two servers).

- ``GET /v1/models/{name}[/versions/{v}]``: ``model_version_status`` (``AVAILABLE`` for what is
  served);
- ``GET /v1/models/{name}[/versions/{v}]/metadata``: the SavedModel's two signatures, as TF
  Serving's ``GetModelMetadata`` shows them;
- ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name`` (default
  ``serving_default``) and ``instances`` (row format) or ``inputs`` (columnar format):
  ``serving_default`` takes uint8 pixel lists ``[h][w][3]`` per instance (any size, all instances
  of one size, as a tensor needs), ``serve_bytes`` takes encoded files as ``{"b64": "..."}``
  (decoded exactly as ``/classify`` decodes them). Either input may be named
  (``{"images": ...}`` / ``{"image_bytes": ...}``) or not. The answer is ``{"predictions": [[p,
  ...], ...]}`` (row) or ``{"outputs": [[p, ...], ...]}`` (columnar).

Errors are ``{"error": "..."}``: 400 for a bad request, 404 for a model or version not served,
413 over the limits.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from service.protocols.tensors import pixel_array, shown
from service.serving.dataplane import DataPlane
from service.serving.errors import ServiceError, answers_errors, error_response
from service.serving.limits import check_count
from service.serving.registry import ServedVersion
from service.serving.requests import Files, InferRequest, ModelSpec, Pixels, Upload

PATH = "/v1"
MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<tail>/metadata|:[a-z]+)?$")
SIGNATURES = {"serving_default": "images", "serve_bytes": "image_bytes"}
OUTPUT = "probabilities"


def mount_tfserving(service: Any, plane: DataPlane) -> None:
    """Serve the API at ``/v1`` from ``service`` (a ``bentoml.Service``)."""
    service.mount_asgi_app(tfserving_app(plane), path=PATH, name="tfserving")

    async def no_listing(request: Request) -> Response:
        """``GET /v1/models``: TF Serving has no listing; a JSON 404 that says where to look
        (the exact route: the mount alone would redirect to ``/v1/models/``)."""
        return error_response(
            ServiceError(
                404,
                "TF Serving's API lists no models: GET /v1/models/{name} for one model's status "
                f"(served: {plane.registry.summary() if plane.registry else 'nothing yet'}; "
                "POST /metadata or POST /v2/repository/index list them all)",
            )
        )

    service.add_route(Route(f"{PATH}/models", no_listing, methods=["GET"]))


def tfserving_app(plane: DataPlane) -> Router:
    @answers_errors
    async def model(request: Request) -> Response:
        match = MODEL_PATH.match(request.path_params["rest"])
        if match is None:
            raise ServiceError(404, f"no such route: {request.url.path}")
        tail = match["tail"] or ""
        spec = ModelSpec(name=match["name"], version=match["version"])
        if tail.startswith(":"):
            if tail != ":predict":
                raise ServiceError(400, f"{tail[1:]} is not supported: convzoo models serve :predict")
            if request.method != "POST":
                raise ServiceError(405, ":predict takes POST")
            return await predict(plane, request, spec)
        if request.method != "GET":
            raise ServiceError(405, f"{request.url.path} takes GET")
        try:
            served = plane.resolve(spec)
        except ServiceError as error:
            raise ServiceError(error.status, error.message) from None
        if tail == "/metadata":
            return JSONResponse(metadata(served))
        versions = (
            sorted(plane.registry.models.get(served.name, {}))
            if match["version"] is None
            else [served.version]
        )
        return JSONResponse(
            {
                "model_version_status": [
                    {
                        "version": str(v),
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                    for v in versions
                ]
            }
        )

    return Router(routes=[Route("/models/{rest:path}", model, methods=["GET", "POST"])])


def metadata(served: ServedVersion) -> dict[str, Any]:
    """``GetModelMetadata``'s answer for the SavedModel's signatures."""

    def tensor(name: str, dtype: str, dims: list[int], signature: str) -> dict[str, Any]:
        return {
            "dtype": dtype,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
            "name": f"{signature}_{name}:0",
        }

    classes = len(served.labels)
    signatures = {
        "serving_default": ("images", "DT_UINT8", [-1, -1, -1, 3]),
        "serve_bytes": ("image_bytes", "DT_STRING", [-1]),
    }
    return {
        "model_spec": {"name": served.name, "signature_name": "", "version": str(served.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    signature: {
                        "inputs": {name: tensor(name, dtype, dims, signature)},
                        "outputs": {
                            OUTPUT: tensor(OUTPUT, "DT_FLOAT", [-1, classes], "StatefulPartitionedCall")
                        },
                        "method_name": "tensorflow/serving/predict",
                        "defaults": {},
                    }
                    for signature, (name, dtype, dims) in signatures.items()
                }
            }
        },
    }


async def predict(plane: DataPlane, request: Request, spec: ModelSpec) -> Response:
    """``:predict``: the body parsed into the data plane's request (inside its life cycle), the
    answer formatted."""
    parsed: dict[str, Any] = {}

    async def inputs(served: ServedVersion) -> Files | Pixels:
        limits = plane.config.limits
        parsed["rows"], values = await plane.parse_json(
            await request.body(), lambda body: _inputs(body, limits)
        )
        return Pixels(values) if isinstance(values, np.ndarray) else Files(values)

    answer = await plane.infer(InferRequest("tfserving", spec, inputs))
    key = "predictions" if parsed["rows"] else "outputs"
    return Response(
        json.dumps({key: answer.probabilities.astype(np.float32).tolist()}, separators=(",", ":")),
        media_type="application/json",
    )


def _inputs(body: Any, limits: Any) -> tuple[bool, list[Upload] | np.ndarray]:
    """(row format?, the uploads or the pixels) of a parsed predict request; the count of
    instances is checked before any of them is decoded."""
    signature, rows, values = _request(body)
    if SIGNATURES[signature] == "image_bytes":
        check_count(len(values), limits)
        return rows, _uploads(values)
    return rows, _pixels(values, limits)


def _request(body: Any) -> tuple[str, bool, Any]:
    """(signature, row format?, the input's values) of a predict request."""
    if not isinstance(body, dict):
        raise ServiceError(400, "the request must be a JSON object with 'instances' or 'inputs'")
    signature = body.get("signature_name", "serving_default")
    if not isinstance(signature, str) or signature not in SIGNATURES:
        raise ServiceError(400, f"signature_name {shown(signature)} is not one of: {', '.join(SIGNATURES)}")
    input_name = SIGNATURES[signature]
    if ("instances" in body) == ("inputs" in body):
        raise ServiceError(400, "send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    rows = "instances" in body
    values = body["instances"] if rows else body["inputs"]
    if rows and isinstance(values, list):
        values = [_named(v, input_name) if isinstance(v, dict) and "b64" not in v else v for v in values]
    elif isinstance(values, dict) and "b64" not in values:
        values = _named(values, input_name)
    if not isinstance(values, list) or not values:
        raise ServiceError(400, f"'{input_name}' must be a non-empty list of instances")
    return signature, rows, values


def _named(value: dict, input_name: str) -> Any:
    if set(value) != {input_name}:
        raise ServiceError(400, f"the signature's only input is '{input_name}', got {shown(sorted(value))}")
    return value[input_name]


def _uploads(values: list) -> list[Upload]:
    uploads = []
    for i, value in enumerate(values):
        if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
            raise ServiceError(400, f'image_bytes[{i}] must be {{"b64": "<base64 of the file>"}}')
        try:
            uploads.append(Upload(f"image_bytes[{i}]", base64.b64decode(value["b64"], validate=True)))
        except (binascii.Error, ValueError):
            raise ServiceError(400, f"image_bytes[{i}] is not valid base64") from None
    return uploads


def _pixels(values: list, limits: Any) -> np.ndarray:
    """Nested pixel lists ``[n][h][w][3]`` as uint8; the shape is read from the first elements
    and checked against the limits before the values are converted."""
    shape, probe = [], values
    while isinstance(probe, list) and len(shape) < 5:
        shape.append(len(probe))
        probe = probe[0] if probe else None
    if len(shape) != 4:
        raise ServiceError(
            400, f"'images' must be pixel lists [n][height][width][3], got {len(shape)} levels"
        )
    return pixel_array(shape, limits, data=values, name="images")
