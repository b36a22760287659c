"""What every OIP peer serves: convzoo's model, runtime and decoder, imported from convzoo.

``OIPModel`` loads a version of ``models/<name>/`` exactly as the service does on a CPU, on the
runtime the service serves it with by default (``RUNTIME``: the OpenVINO int8 form, through
``service.runtimes.choose`` and ``load``, so its accuracy gate, checksums and compile settings
apply), on as many threads as the service gives its one worker (``service.config.worker_cpus(1)``:
the CPUs this process may use, 1 under ``taskset -c 1``), checks it against its metadata and warms
it up at every batch size up to ``max_batch_size`` (``runtimes.warm_up``), as
``service.serving.registry`` does. ``predict(files)`` decodes each file as the service's batcher
does on one CPU (``service.serving.dataplane``: ``images.open_upload`` reads the header, then
``images.prepare_image`` decodes, crops and resizes: simplejpeg at a reduced scale for a JPEG),
stacks them and runs the model: float32 probabilities ``[n, classes]``.

Imports: numpy, Pillow, simplejpeg, OpenVINO and convzoo's ``service.runtimes``,
``service.serving.images``, ``service.config``, ``service.repository``; no TensorFlow, no
BentoML (the peers' environments have neither).

Also what the peers without an OIP codec of their own (Ray) need: ``parse_infer`` and
``infer_answer``, the request and answer of ``/v2/models/<name>/infer`` for one BYTES input
(JSON with base64 data, or the binary data extension), and ``add_arguments``, the options every
peer takes.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, read_metadata, resolve
from service import runtimes
from service.config import Limits, worker_cpus
from service.serving.images import InvalidImage, Resize, open_upload, prepare_image

INPUT = "image_bytes"
OUTPUT = "probabilities"
RUNTIME = "openvino-int8"
MAX_BATCH_SIZE = 32

__all__ = ["INPUT", "OUTPUT", "InvalidImage", "OIPModel", "add_arguments", "infer_answer", "parse_infer"]


class OIPModel:
    """A model version loaded as the service loads it, called with encoded files (module docstring)."""

    def __init__(
        self,
        spec: str = DEFAULT_MODEL,
        models_dir: str | Path = DEFAULT_MODELS_DIR,
        *,
        runtime: str = RUNTIME,
        threads: int | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        warm_up: bool = True,
    ) -> None:
        self.ref = resolve(spec, Path(models_dir))
        self.name, self.version = self.ref.name, self.ref.version
        metadata = read_metadata(self.ref)
        self.labels: list[str] = list(metadata["labels"])
        self.classes = len(self.labels)
        self.resize = Resize.from_metadata(metadata)
        self.limits = Limits()
        self.threads = threads or worker_cpus(1)
        self.choice = runtimes.choose(runtime, metadata, self.ref.path)
        self.model = runtimes.load(self.choice, self.ref.path, threads=self.threads)
        size = (self.resize.height, self.resize.width)
        if problem := runtimes.signature_problem(self.model, size, self.classes):
            raise RuntimeError(f"{self.ref.path}: {problem}")
        if warm_up:
            runtimes.warm_up(self.model, size, max_batch_size)
            runtimes.release_free_memory()

    def describe(self) -> str:
        return f"{self.ref.spec} on {self.choice.key}, {self.threads} thread(s), convzoo's decoder"

    def decode(self, data: bytes, index: int = 0) -> np.ndarray:
        """One file as the service's batcher decodes it (``images.open_upload``, then
        ``images.prepare_image`` with the image it opened); ``InvalidImage`` if it cannot."""
        _cost, opened = open_upload(data, self.resize, self.limits)
        return prepare_image(data, f"{INPUT}[{index}]", self.resize, self.limits, opened)

    def predict(self, files: Sequence[bytes]) -> np.ndarray:
        """float32 probabilities ``[len(files), classes]`` of encoded image files."""
        images = np.stack([self.decode(data, index) for index, data in enumerate(files)])
        return self.model(images)


def as_files(values: Any, base64_strings: bool = True) -> list[bytes]:
    """The elements of a BYTES tensor as bytes: a numpy array or (nested) list of bytes, or of
    strings (base64 when ``base64_strings``, else their UTF-8 bytes)."""
    flat = np.asarray(values, dtype=object).reshape(-1).tolist() if not isinstance(values, list) else values
    files = []
    for value in _flatten(flat):
        if isinstance(value, bytes | bytearray | memoryview | np.bytes_):
            files.append(bytes(value))
        elif isinstance(value, str):
            files.append(base64.b64decode(value, validate=True) if base64_strings else value.encode())
        else:
            raise ValueError(f"'{INPUT}' elements must be bytes or strings, not {type(value).__name__}")
    return files


def _flatten(values: list) -> list:
    out = []
    for value in values:
        out.extend(_flatten(value) if isinstance(value, list) else [value])
    return out


# ------------------------------------------------------------- the OIP infer route, for Ray


class BadRequest(ValueError):
    """A request ``parse_infer`` refuses (answered 400)."""


def parse_infer(body: bytes, header_length: str | None) -> tuple[list[bytes], bool, str | None]:
    """(the files of ``image_bytes``, whether the answer goes binary, the request id) of an OIP
    infer request: JSON (BYTES as base64 strings, or UTF-8 strings) or the binary data extension
    (``header_length``: ``Inference-Header-Content-Length``)."""
    length = len(body) if header_length is None else int(header_length)
    try:
        request = json.loads(body[:length])
        (tensor,) = request["inputs"]
    except (ValueError, KeyError, TypeError) as error:
        raise BadRequest(f"not an infer request with one input ({error})") from None
    if tensor.get("name") != INPUT or tensor.get("datatype") != "BYTES":
        raise BadRequest(f"send one input '{INPUT}' of datatype BYTES")
    parameters = tensor.get("parameters") or {}
    if "binary_data_size" in parameters:
        files = _unpack(memoryview(body)[length : length + parameters["binary_data_size"]])
    else:
        files = as_files(tensor.get("data") or [], parameters.get("content_type") == "base64")
    outputs = request.get("outputs") or []
    binary = bool((request.get("parameters") or {}).get("binary_data_output")) or any(
        (o.get("parameters") or {}).get("binary_data") for o in outputs
    )
    return files, binary, request.get("id")


def _unpack(chunk: memoryview) -> list[bytes]:
    """BYTES elements of the binary data extension: each a 4-byte little-endian length + bytes."""
    files, offset = [], 0
    while offset < len(chunk):
        (size,) = struct.unpack_from("<I", chunk, offset)
        files.append(bytes(chunk[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return files


def infer_answer(
    name: str, version: int, probabilities: np.ndarray, binary: bool, request_id: str | None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an OIP infer answer (``probabilities`` FP32 ``[n, classes]``)."""
    probabilities = np.ascontiguousarray(probabilities, dtype="<f4")
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
    raw = probabilities.tobytes() if binary else b""
    if binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = probabilities.ravel().tolist()
    answer: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": [output]}
    if request_id is not None:
        answer["id"] = request_id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


# ----------------------------------------------------------------------- the command line


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the peers' own gRPC and metrics ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_arguments(parser: argparse.ArgumentParser, *, port: int, batch_wait_ms: float) -> None:
    """The options every OIP peer takes (benchmarks/peers/__init__.py, ``Peer.module``)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="NAME or NAME:VERSION (default: latest)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--threads", type=int, default=None, help="the runtime's threads (default: as the service, its CPUs)"
    )
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    parser.add_argument(
        "--batch-wait-ms", type=float, default=batch_wait_ms, help="longest wait for a batch to fill"
    )


def load(args: argparse.Namespace) -> OIPModel:
    """The model of a peer's command line, loaded and warmed up, said on stdout."""
    model = OIPModel(args.model, args.models_dir, threads=args.threads, max_batch_size=args.max_batch_size)
    print(f"serving {model.describe()}", flush=True)
    return model
