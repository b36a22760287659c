"""What the load generator sends and how it judges each answer, for every protocol it speaks.

The one place where request bodies are built and answers checked: the Locust users
(``benchmarks.locustfile``), the warm-up and the served-model check (``benchmarks.servers``) use it.
Standard library only (``benchmarks.multipart`` included), so a gevent process (Locust) can import
it. Three protocols (``PROTOCOLS``):

- ``classify``: ``POST /classify``, a multipart form with the files in ``images`` (docs/design.md,
  contract 2); OK is 200 with a JSON list of one result (with a ``label``) per image;
- ``oip-binary``: ``POST /v2/models/<name>/infer`` of the Open Inference Protocol with the binary
  tensor data extension (as Triton and tritonclient frame it): the JSON header, then the
  ``image_bytes`` input (``BYTES [n]``) as each file's 4-byte little-endian length and bytes, the
  header's size in ``Inference-Header-Content-Length``;
- ``oip-json``: the same request as a plain JSON body, each file base64 in ``data`` with the input's
  ``"parameters": {"content_type": "base64"}`` (MLServer's convention, which convzoo's ``/v2``
  honours too).

An OIP answer is OK when it is 200 and carries ``probabilities`` with ``n x classes`` values (as
JSON ``data`` or, when the server answers with the binary extension, as ``binary_data_size`` bytes
of FP32).
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass

from benchmarks.multipart import encode_multipart

PROTOCOLS = ("classify", "oip-binary", "oip-json")
BYTES_INPUT, OUTPUT = "image_bytes", "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Prepared:
    """One request, built before the load starts: path, body, headers, images in it."""

    path: str
    body: bytes
    headers: dict[str, str]
    images: int


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def build(
    protocol: str, files: list[tuple[str, bytes]], model: str | None = None, column: bool = False
) -> Prepared:
    """The request carrying ``files`` ((filename, bytes) pairs) in ``protocol``; ``model``: the
    name in the OIP path; ``column``: ``image_bytes`` of shape ``[n, 1]`` instead of ``[n]`` (Triton
    with batching needs a dimension of its own; convzoo and the other peers take both)."""
    if protocol == "classify":
        body, content_type = encode_multipart(files)
        return Prepared("/classify", body, {"Content-Type": content_type}, len(files))
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    if not model:
        raise ValueError(f"{protocol} needs the model's name (the path /v2/models/<name>/infer)")
    shape = [len(files), 1] if column else [len(files)]
    tensor = {"name": BYTES_INPUT, "datatype": "BYTES", "shape": shape}
    if protocol == "oip-json":
        tensor["parameters"] = {"content_type": "base64"}
        tensor["data"] = [base64.b64encode(data).decode("ascii") for _, data in files]
        body = json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()
        return Prepared(infer_path(model), body, {"Content-Type": "application/json"}, len(files))
    binary = b"".join(struct.pack("<I", len(data)) + data for _, data in files)
    tensor["parameters"] = {"binary_data_size": len(binary)}
    header = json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()
    return Prepared(
        infer_path(model),
        header + binary,
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
        len(files),
    )


def build_all(
    protocol: str,
    files: list[tuple[str, bytes]],
    per_request: int,
    model: str | None = None,
    column: bool = False,
) -> list[Prepared]:
    """One request per starting file, ``per_request`` consecutive files each (wrapping around)."""
    return [
        build(protocol, [files[(start + i) % len(files)] for i in range(per_request)], model, column)
        for start in range(len(files))
    ]


def check(protocol: str, status: int, body: bytes, headers, images: int, classes: int | None) -> str | None:
    """Why the answer is not OK (``None``: it is). ``headers``: a mapping with case-insensitive
    ``get`` or plain lower-case keys; ``classes``: the model's class count (None: any > 0)."""
    if status != 200:
        return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    if protocol == "classify":
        return _check_classify(body, images)
    return _check_oip(body, _header(headers, HEADER_LENGTH), images, classes)


def _header(headers, name: str) -> str | None:
    if headers is None:
        return None
    found = headers.get(name)
    return found if found is not None else headers.get(name.lower())


def _check_classify(body: bytes, images: int) -> str | None:
    try:
        results = json.loads(body)
    except ValueError:
        return "the answer is not JSON"
    if (
        not isinstance(results, list)
        or len(results) != images
        or not all(isinstance(r, dict) and "label" in r for r in results)
    ):
        return f"expected a list of {images} results with 'label', got {str(results)[:200]}"
    return None


def _check_oip(body: bytes, header_length: str | None, images: int, classes: int | None) -> str | None:
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            return f"{HEADER_LENGTH} {header_length!r} is not a number"
        body, binary = body[:length], body[length:]
    try:
        answer = json.loads(body)
    except ValueError:
        return "the answer's JSON header is not JSON"
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    found = [o for o in outputs or [] if isinstance(o, dict) and o.get("name") == OUTPUT]
    if not found:
        return f"no output '{OUTPUT}' in {str(answer)[:200]}"
    output = found[0]
    parameters = output.get("parameters") if isinstance(output.get("parameters"), dict) else {}
    if "binary_data_size" in parameters:
        values = parameters["binary_data_size"] // 4 if len(binary) >= parameters["binary_data_size"] else -1
    else:
        values = _count(output.get("data"))
    if values <= 0 or values % images or (classes is not None and values != images * classes):
        wanted = f"{images} x {classes}" if classes is not None else f"a multiple of {images}"
        return f"'{OUTPUT}' holds {values} values, expected {wanted}"
    return None


def _count(data) -> int:
    """How many numbers ``data`` holds (flat, or nested as some servers answer)."""
    if isinstance(data, list):
        return sum(_count(item) if isinstance(item, list) else 1 for item in data)
    return -1
