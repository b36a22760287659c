"""Issue #31, "A second attack", the HTTP side (items 1, 2, 6 and 8), against a real ``bentoml
serve`` (the default model of the repository, OpenVINO: it starts in seconds) with an API key:
request heads bounded in size and time before the key is checked, JSON tensor bodies bounded and
parsed within a memory budget, versions and numbers a client writes read by one rule (400, never
a 500 or a 60-second hang), access log lines escaped. Only HTTP and the processes are used, so the
module runs unchanged against an older checkout (to see each attack succeed there).

Smaller sizes than the issue's prove the same bounds quickly (``CONVZOO_MAX_JSON_BYTES`` 4 MiB,
``CONVZOO_HEADER_TIMEOUT_S`` 2); ``benchmarks/attack_http.py`` measures the issue's full sizes.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import socket
import time
import uuid

import psutil
import pytest
import requests
import service_files as files
from helpers import REPO, Server

MiB = 1024 * 1024
KEY = f"attack-{secrets.token_hex(8)}"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT_S = 2
MAX_JSON_BYTES = 4 * MiB
SETTINGS = {
    "CONVZOO_MODEL": "imagenette",
    "CONVZOO_MODELS_DIR": str(REPO / "models"),
    "CONVZOO_API_KEY": KEY,
    "CONVZOO_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "CONVZOO_MAX_JSON_BYTES": str(MAX_JSON_BYTES),
    "CONVZOO_MAX_REQUEST_DECODE_BYTES": str(256 * MiB),
    "BENTOML_DO_NOT_TRACK": "true",
}
V1 = "/v1/models/imagenette:predict"
V2 = "/v2/models/imagenette/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**os.environ, **SETTINGS, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml_home"))}
    server = Server.started([], env, tmp_path_factory.mktemp("logs") / "serve.log")
    try:
        yield server
    finally:
        server.stop()


def worker_of(server: Server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    [worker] = [c for c in children if "_bentoml_impl.worker.service" in " ".join(c.cmdline())]
    return worker


PHOTO = files.encode(files.photo((640, 480), seed=3), "JPEG", quality=90)


def classify(server: Server) -> float:
    """Seconds a normal one-photo ``/classify`` takes (asserting its 200)."""
    started = time.monotonic()
    answer = requests.post(
        f"{server.url}/classify", files=[("images", ("photo.jpg", PHOTO))], headers=AUTH, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


def outcomes(server: Server) -> dict[str, float]:
    """convzoo_requests_total by outcome, all protocols and models together."""
    totals: dict[str, float] = {}
    for line in requests.get(f"{server.url}/metrics", headers=AUTH, timeout=30).text.splitlines():
        if line.startswith("convzoo_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            totals[outcome] = totals.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return totals


# ------------------------------------------------------------------ 1. request heads


def test_a_never_finished_header_is_refused_without_a_key(server):
    """``GET /livez`` with a header of 32 MiB that never ends, no key: refused once the head
    passes CONVZOO_MAX_HEADER_BYTES (64 KiB) with 431, the rest never read; the worker spends
    little CPU and memory on it, and a normal request meanwhile is quick."""
    worker = worker_of(server)
    classify(server)
    rss, cpu = worker.memory_info().rss, sum(worker.cpu_times()[:2])
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    with pytest.raises(OSError):
        for _ in range(32):
            connection.sendall(b"a" * MiB)
            sent += MiB
    assert sent <= 8 * MiB, sent
    reply = b""
    try:
        while chunk := connection.recv(4096):
            reply += chunk
    except OSError:
        pass
    connection.close()
    assert classify(server) < 1
    assert sum(worker.cpu_times()[:2]) - cpu < 0.5
    assert (worker.memory_info().rss - rss) / MiB < 20
    if reply:  # the reset may have come first
        assert reply.startswith(b"HTTP/1.1 431") and b"CONVZOO_MAX_HEADER_BYTES" in reply


def test_slow_heads_are_cut(server):
    """Slowloris: 100 connections sending one header byte every 0.5 s are closed (408) within
    CONVZOO_HEADER_TIMEOUT_S (2 s) and a bit, and a normal request is served meanwhile."""
    connections = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(100)]
    for connection in connections:
        connection.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        connection.setblocking(False)
    started, closed = time.monotonic(), {}
    while len(closed) < len(connections) and time.monotonic() - started < 10:
        for index, connection in enumerate(connections):
            if index not in closed:
                try:
                    closed[index] = connection.recv(4096)
                except BlockingIOError:
                    try:
                        connection.send(b"X")
                    except OSError:
                        closed[index] = b""
                except OSError:
                    closed[index] = b""
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    for connection in connections:
        connection.close()
    assert len(closed) == len(connections) and elapsed < HEADER_TIMEOUT_S + 2, (len(closed), elapsed)
    assert sum(reply.startswith(b"HTTP/1.1 408") for reply in closed.values()) >= 90
    assert classify(server) < 1


# ------------------------------------------------------------------ 2. JSON tensor bodies


def empty_lists(size: int) -> bytes:
    """``/v2`` infer's ``{"inputs": [[], [], ...]}`` of about ``size`` bytes."""
    count = (size - 16) // 3
    return b'{"inputs":[' + b"[]," * (count - 1) + b"[]]}"


def empty_b64(size: int) -> bytes:
    """``/v1`` predict's ``serve_bytes`` with ``{"b64": ""}`` instances, about ``size`` bytes."""
    count = (size - 64) // 11
    return b'{"signature_name":"serve_bytes","instances":[' + b'{"b64":""},' * (count - 1) + b'{"b64":""}]}'


def test_a_refused_json_body_leaves_nothing_behind(server):
    """A 3.9 MiB ``{"inputs": [[], ...]}`` (1.3 M lists, ~90 MB as Python objects) is parsed and
    refused (400: one input); its objects are freed with the answer, not kept until a full garbage
    collection (the refusal's traceback held the handler's frame, a reference cycle). First of
    the JSON tests: the worker has parsed no large JSON before, so its memory shows the kept objects."""
    worker = worker_of(server)
    body = empty_lists(MAX_JSON_BYTES - 64 * 1024)
    for _ in range(3):
        requests.post(f"{server.url}/metadata", json={}, headers=AUTH, timeout=30)
    rss = worker.memory_info().rss
    answer = requests.post(f"{server.url}{V2}", data=body, headers=AUTH, timeout=60)
    assert answer.status_code == 400 and "one input" in answer.json()["error"]
    time.sleep(1)
    for _ in range(10):
        classify(server)
    grown = (worker.memory_info().rss - rss) / MiB
    assert grown < 45, f"the worker kept {grown:.0f} MiB"


def test_json_bodies_over_their_cap_are_refused_unread(server):
    """Four bodies of 24 MiB at once (under CONVZOO_MAX_REQUEST_BYTES, over CONVZOO_MAX_JSON_BYTES),
    both protocols, with and without Content-Length: 413 naming the setting, a normal request
    quick meanwhile, the worker's memory as before."""
    worker = worker_of(server)
    rss = worker.memory_info().rss
    bodies = [(V1, empty_b64(24 * MiB)), (V2, empty_lists(24 * MiB))]

    def post(path: str, body: bytes, chunked: bool) -> requests.Response:
        data = iter([body[i : i + MiB] for i in range(0, len(body), MiB)]) if chunked else body
        return requests.post(f"{server.url}{path}", data=data, headers=AUTH, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(post, *bodies[i % 2], i >= 2) for i in range(4)]
        normal_s = classify(server)
        answers = [answer.result() for answer in answers]
    for answer in answers:
        assert answer.status_code == 413 and "CONVZOO_MAX_JSON_BYTES" in answer.json()["error"]
    assert normal_s < 2
    assert (worker.memory_info().rss - rss) / MiB < 100


def test_the_binary_extension_does_not_lift_the_json_cap(server):
    """``Inference-Header-Content-Length`` lets a ``/v2`` body carry binary data up to
    CONVZOO_MAX_REQUEST_BYTES, but not a larger JSON: on ``/v1`` the header changes nothing, and
    on ``/v2`` a JSON header over the cap is refused before it is parsed."""
    body = empty_lists(8 * MiB)
    v1 = requests.post(
        f"{server.url}{V1}", data=body, headers={**AUTH, "Inference-Header-Content-Length": "10"}, timeout=60
    )
    assert v1.status_code == 413 and "CONVZOO_MAX_JSON_BYTES" in v1.json()["error"]
    v2 = requests.post(
        f"{server.url}{V2}",
        data=body,
        headers={**AUTH, "Inference-Header-Content-Length": str(len(body))},
        timeout=60,
    )
    assert v2.status_code == 413 and "CONVZOO_MAX_JSON_BYTES" in v2.json()["error"]


def test_json_that_would_take_too_much_memory_is_refused_before_parsing(server):
    """4 MiB of empty objects (~370 MB as Python objects; the request's decode budget here is
    256 MiB): 413 at once, naming the budget, nothing parsed."""
    body = b"[" + b"{}," * (MAX_JSON_BYTES // 3 - 2) + b"{}]"
    worker = worker_of(server)
    rss = worker.memory_info().rss
    started = time.monotonic()
    answer = requests.post(f"{server.url}{V2}", data=body, headers=AUTH, timeout=60)
    assert answer.status_code == 413 and "CONVZOO_MAX_REQUEST_DECODE_BYTES" in answer.json()["error"]
    assert time.monotonic() - started < 1
    assert (worker.memory_info().rss - rss) / MiB < 40


def test_instances_are_counted_before_any_is_decoded(server):
    """300,000 ``{"b64": ...}`` instances: 413 for the count; none is base64-decoded (an invalid
    one would be named first otherwise)."""
    body = b'{"signature_name":"serve_bytes","instances":[' + b'{"b64":"!"},' * 299_999 + b'{"b64":"!"}]}'
    answer = requests.post(f"{server.url}{V1}", data=body, headers=AUTH, timeout=60)
    assert answer.status_code == 413 and "CONVZOO_MAX_IMAGES" in answer.json()["error"], answer.text


@pytest.mark.parametrize("path", [V2, V1])
def test_deeply_nested_json_is_a_400(server, path):
    before = outcomes(server)
    answer = requests.post(f"{server.url}{path}", data=b"[" * 1000 + b"]" * 1000, headers=AUTH, timeout=10)
    assert answer.status_code == 400 and "nested" in answer.json()["error"], answer.text
    assert outcomes(server).get("error", 0) == before.get("error", 0)


# ------------------------------------------------------------------ 6. versions and numbers


@pytest.mark.parametrize("version", ["%C2%B2", "%EF%BC%92", "%D9%A2", "1" * 5000, "02"])
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/v2/models/imagenette/versions/{v}"),
        ("GET", "/v2/models/imagenette/versions/{v}/ready"),
        ("POST", "/v2/models/imagenette/versions/{v}/infer"),
        ("GET", "/v1/models/imagenette/versions/{v}"),
        ("GET", "/v1/models/imagenette/versions/{v}/metadata"),
        ("POST", "/v1/models/imagenette/versions/{v}:predict"),
    ],
)
def test_a_version_in_a_path_is_ascii_digits(server, method, template, version):
    """``²`` (``isdigit`` but not ``int``), fullwidth and Arabic-Indic 2 (which ``int`` read as
    2), 5,000 digits, a leading zero: 400 at once, never version 2, a 500 or a 60-second hang."""
    started = time.monotonic()
    answer = requests.request(
        method, f"{server.url}{template.format(v=version)}", json={}, headers=AUTH, timeout=10
    )
    assert answer.status_code == 400, answer.text
    assert "ASCII digits" in answer.json()["error"]
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "spec", ["imagenette:²", "imagenette:２", "imagenette:٢", "imagenette:" + "9" * 5000]
)
def test_a_version_in_a_form_or_json_is_ascii_digits(server, spec):
    before = outcomes(server)
    upload = requests.post(
        f"{server.url}/classify",
        files=[("images", ("photo.jpg", PHOTO))],
        data={"model": spec},
        headers=AUTH,
        timeout=10,
    )
    assert upload.status_code == 400 and "ASCII digits" in upload.json()["error"], upload.text
    metadata = requests.post(f"{server.url}/metadata", json={"model": spec}, headers=AUTH, timeout=10)
    assert metadata.status_code == 400 and "ASCII digits" in metadata.json()["error"], metadata.text
    after = outcomes(server)
    assert after.get("error", 0) == before.get("error", 0)
    assert after["invalid_input"] == before.get("invalid_input", 0) + 1


@pytest.mark.parametrize("value", ["\xb2", "1" * 5000, "12x", "-1"])
def test_numbers_in_headers_and_fields_are_ascii_digits(server, value):
    """``Inference-Header-Content-Length: ²`` (a 500 before) and ``top_k=²``: 400."""
    answer = requests.post(
        f"{server.url}{V2}",
        data=b'{"inputs": []}',
        headers={**AUTH, "Inference-Header-Content-Length": value},
        timeout=10,
    )
    assert answer.status_code == 400 and "Inference-Header-Content-Length" in answer.json()["error"]
    upload = requests.post(
        f"{server.url}/classify",
        files=[("images", ("photo.jpg", PHOTO))],
        data={"top_k": value},
        headers=AUTH,
        timeout=10,
    )
    assert upload.status_code == 400 and "top_k" in upload.json()["error"], upload.text


# ------------------------------------------------------------------ 8. the access log


def test_access_log_lines_escape_what_the_client_sent(server):
    """A percent-encoded newline in the path no longer starts a log line of its own; a Content-Type
    that is not UTF-8 no longer writes a traceback per request."""
    marker = uuid.uuid4().hex[:8]
    requests.get(f"{server.url}/v2/models/x{marker}%0aFAKE2%20LINE", headers=AUTH, timeout=10)
    requests.get(f"{server.url}/livez%0d%0a{marker}FAKE3%20LINE", timeout=10)
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(
        f"POST /metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode()
        + b"Content-Type: application/json\xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    reply = b""
    while chunk := connection.recv(65536):
        reply += chunk
    connection.close()
    assert reply.startswith(b"HTTP/1.1 200")
    time.sleep(0.5)
    log = server.log.read_text(errors="replace")
    assert not any(line.startswith(("FAKE2", "FAKE3", f"{marker}FAKE3")) for line in log.splitlines())
    assert f"x{marker}\\nFAKE2 LINE" in log
    assert "Traceback" not in log, log[log.index("Traceback") :][:2000]


def test_every_answer_is_json_and_nothing_is_counted_as_the_servers_error(server):
    """After all of the above, no request of this module was a server error."""
    assert outcomes(server).get("error", 0) == 0
    assert "returned without" not in server.log.read_text(errors="replace")


def test_metadata_of_a_v2_model_still_works(server):
    """A plain ASCII version still selects its version (whichever the repository's latest is)."""
    served = requests.get(f"{server.url}/v2/models/imagenette", headers=AUTH, timeout=10)
    assert served.status_code == 200, served.text
    [version] = json.loads(served.text)["versions"]
    answer = requests.get(f"{server.url}/v2/models/imagenette/versions/{version}", headers=AUTH, timeout=10)
    assert answer.status_code == 200 and json.loads(answer.text)["versions"] == [version]


# ------------------------------------------------------------------ 6. every route answers


def test_a_failing_handler_is_answered_at_once_behind_bentomls_timeout():
    """In process, BentoML's own timeout middleware in front of a route that raises: the client
    waited the whole timeout, then got a plain-text 500; behind it, ``AlwaysAnswer`` answers a JSON
    500 at once (and a handler that returns without answering too)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    from service.http.answering import AlwaysAnswer

    async def fails(request):
        raise ValueError("a bug")

    async def silent(scope, receive, send):
        return None

    app = Starlette(
        routes=[Route("/fails", fails), Mount("/silent", app=silent)],
        middleware=[Middleware(TimeoutMiddleware, timeout=5), Middleware(AlwaysAnswer)],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/fails", "/silent"):
            started = time.monotonic()
            answer = client.get(path)
            assert time.monotonic() - started < 1
            assert answer.status_code == 500 and "see its log" in answer.json()["error"]
