"""The benchmark's OIP peers (benchmarks/peers/: Triton, MLServer, KServe, Ray Serve) answer as
convzoo does: each started in its own environment (``benchmarks.peers.envs``), on a free port,
serving the latest ``models/imagenette``, gets one real photo of ``../shared/data/photos-varied``
in every request encoding it takes (``Peer.binary``, ``Peer.json_bytes``), and must answer
convzoo's in-process top-1 with probabilities within 1e-4 (the same int8 model on the same
runtime, the same decoder). Slow: the first run builds the environments (minutes each).

The default tests check the plain data (``PEERS``: modules and requirements exist) and the OIP
codec the Ray peer uses, in this process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from benchmarks.peers import PEERS, Peer
from tests.helpers import REPO, free_port, stop_group

PHOTOS = REPO.parent / "shared" / "data" / "photos-varied"
MODELS = REPO / "models"
MODEL = "imagenette"
TOLERANCE = 1e-4


def photo() -> bytes:
    """The first real photo of photos-varied (the test skips without them)."""
    found = sorted(p for p in PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not found:
        pytest.skip(f"no photos in {PHOTOS}")
    return found[0].read_bytes()


# ------------------------------------------------------------------------- the requests


def binary_request(data: bytes, shape: tuple[int, ...], binary_output: bool) -> tuple[bytes, dict]:
    """An infer request with the binary data extension, as tritonclient sends it."""
    element = struct.pack("<I", len(data)) + data
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": list(shape),
                "parameters": {"binary_data_size": len(element)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": binary_output}}],
    }
    text = json.dumps(header).encode()
    return text + element, {
        "Inference-Header-Content-Length": str(len(text)),
        "Content-Type": "application/octet-stream",
    }


def json_request(data: bytes, shape: tuple[int, ...]) -> tuple[bytes, dict]:
    """An infer request in JSON, the BYTES as base64 (MLServer's convention)."""
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": list(shape),
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(data).decode()],
            }
        ]
    }
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def probabilities_of(response: requests.Response) -> np.ndarray:
    """``probabilities`` of an infer answer, JSON or binary."""
    length = response.headers.get("Inference-Header-Content-Length")
    header = json.loads(response.content[: int(length)] if length else response.content)
    (output,) = [o for o in header["outputs"] if o["name"] == "probabilities"]
    assert output["datatype"] == "FP32"
    if "binary_data_size" in (output.get("parameters") or {}):
        values = np.frombuffer(response.content[int(length) :], "<f4")
    else:
        values = np.asarray(output["data"], np.float32)
    return values.reshape(output["shape"])


# ------------------------------------------------------------------------- the reference


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """convzoo's own answer for the photo, in this process: the int8 form loaded by
    ``service.runtimes``, the photo decoded by ``service.serving.images`` as the service does."""
    from benchmarks.modelrepo import read_metadata, resolve
    from service import runtimes
    from service.config import Limits
    from service.serving.images import Resize, open_upload, prepare_image

    data = photo()
    ref = resolve(MODEL, MODELS)
    metadata = read_metadata(ref)
    model = runtimes.load(runtimes.choose("openvino-int8", metadata, ref.path), ref.path, threads=1)
    resize = Resize.from_metadata(metadata)
    _, opened = open_upload(data, resize, Limits())
    return model(prepare_image(data, "photo", resize, Limits(), opened)[None])[0]


# ------------------------------------------------------------------------- a running peer


class PeerProcess:
    """A peer started in its own environment and process group; ``stop`` ends it and every
    process it started (Ray's, Triton's), even those that left its group."""

    def __init__(self, peer: Peer, python: Path, log: Path) -> None:
        self.peer, self.log, self.port = peer, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(python), "-m", peer.module, "--model", MODEL, "--models-dir", str(MODELS)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--threads", "1"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started = time.monotonic()
        self.children: set[psutil.Process] = set()

    def wait_ready(self) -> float:
        deadline = self.started + self.peer.ready_timeout_s
        while time.monotonic() < deadline:
            self._remember_children()
            assert self.process.poll() is None, f"{self.peer.name} exited early:\n{self.log_tail()}"
            try:
                if (
                    requests.get(self.url + self.peer.ready_path.format(name=MODEL), timeout=2).status_code
                    == 200
                ):
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"{self.peer.name} not ready after {self.peer.ready_timeout_s} s:\n{self.log_tail()}"
        )

    def _remember_children(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.children |= set(psutil.Process(self.process.pid).children(recursive=True))

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self._remember_children()
        stop_group(self.process)
        for child in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(list(self.children), timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_answers_as_convzoo(name, reference, tmp_path):
    from benchmarks.peers.envs import EnvError, ensure_env

    peer = PEERS[name]
    data = photo()
    started = time.monotonic()
    try:
        python = ensure_env(peer.env)
    except EnvError as error:
        pytest.skip(f"pip cannot install the {name} peer's environment here: {error}")
    built = time.monotonic() - started
    server = PeerProcess(peer, python, tmp_path / f"{name}.log")
    try:
        ready = server.wait_ready()
        encodings = []
        if peer.binary:
            encodings.append(("binary", binary_request(data, peer.shape, peer.binary_output)))
        if peer.json_bytes == "base64":
            encodings.append(("json", json_request(data, peer.shape)))
        assert encodings, f"{name} takes neither encoding"
        url = f"{server.url}/v2/models/{MODEL}/infer"
        for encoding, (body, headers) in encodings:
            requests.post(url, data=body, headers=headers, timeout=60)  # the first: any lazy set-up
            times = []
            for _ in range(5):
                sent = time.perf_counter()
                response = requests.post(url, data=body, headers=headers, timeout=60)
                times.append(time.perf_counter() - sent)
            assert response.status_code == 200, f"{encoding}: {response.text[:500]}\n{server.log_tail()}"
            probabilities = probabilities_of(response)
            assert probabilities.shape == (1, reference.shape[0])
            assert int(np.argmax(probabilities[0])) == int(np.argmax(reference))
            assert np.abs(probabilities[0] - reference).max() < TOLERANCE
            print(
                f"{name} {encoding}: env {built:.1f} s, ready in {ready:.1f} s, one request "
                f"{1000 * min(times):.1f} ms (best of 5)"
            )
    finally:
        server.stop()


# ------------------------------------------------------------------- the default tests


def test_every_peer_has_its_module_and_requirements():
    from benchmarks.peers.envs import REQUIREMENTS

    for name, peer in PEERS.items():
        assert peer.name == name
        assert (REPO / (peer.module.replace(".", "/") + ".py")).is_file(), peer.module
        assert (REQUIREMENTS / f"{peer.env}.txt").is_file(), peer.env
        assert peer.binary or peer.json_bytes, f"{name}: no encoding a client could send"


def test_the_ray_peers_codec_reads_both_encodings_and_answers_both():
    from benchmarks.peers.oip_model import infer_answer, parse_infer

    data = b"\xff\xd8 not really a JPEG \x00\xff\xd9"
    body, headers = binary_request(data, (1,), True)
    assert parse_infer(body, headers["Inference-Header-Content-Length"]) == ([data], True, None)
    body, _ = json_request(data, (1, 1))
    assert parse_infer(body, None) == ([data], False, None)
    probabilities = np.arange(10, dtype=np.float32)[None] / 10
    for binary in (True, False):
        content, headers = infer_answer("m", 3, probabilities, binary, "id-1")
        response = requests.Response()
        response._content, response.headers = content, requests.structures.CaseInsensitiveDict(headers)
        np.testing.assert_array_equal(probabilities_of(response), probabilities)
