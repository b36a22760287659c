"""Issue #24, "Hardening", against real ``bentoml serve`` processes, where the attack is memory or
time (the attacks that are a request are tested in process in tests/test_hardening.py).

Two servers on one host and one ``BENTOML_HOME``, serving the default model of the repository
(OpenVINO: they start in seconds), the first with an API key: 10,000 random paths, two requests of
32 costly PNGs beside a normal photo, a 200 MB ``/metadata`` body, a large refused form, stalled
bodies beside the concurrency limit, forwarded headers and a hostile Host, what ``/metadata``
shows, refusals in the log, each server's own metrics. Only HTTP and the processes are used, so
the module runs unchanged against an older checkout (to see each attack succeed there).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import random
import secrets
import socket
import string
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
import service_files as files
from helpers import REPO, Server
from service_files import BOUNDARY, multipart

MiB = 1024 * 1024
KEY = f"hardening-{secrets.token_hex(8)}"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_REQUEST_DECODE_BYTES = 1024 * MiB


# ------------------------------------------------------------------------------- real servers


SETTINGS = {
    "CONVZOO_MODEL": "imagenette",
    "CONVZOO_MODELS_DIR": str(REPO / "models"),
    "CONVZOO_API_KEY": KEY,
    "CONVZOO_MAX_CONCURRENCY": "4",
    "CONVZOO_BODY_TIMEOUT_S": "3",
    "BENTOML_DO_NOT_TRACK": "true",
}


def start(home: Path, log: Path, **settings: str) -> Server:
    env = {**os.environ, **SETTINGS, "BENTOML_HOME": str(home), **settings}
    return Server.started([], env, log)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers on one host and one BENTOML_HOME (the second starts after the first, without a
    key, believing forwarded headers from 127.0.0.1)."""
    home = tmp_path_factory.mktemp("bentoml_home")
    logs = tmp_path_factory.mktemp("logs")
    first = start(home, logs / "first.log")
    try:
        second = start(home, logs / "second.log", CONVZOO_API_KEY="", CONVZOO_FORWARDED_ALLOW_IPS="127.0.0.1")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def worker_of(server: Server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    [worker] = [c for c in children if "_bentoml_impl.worker.service" in " ".join(c.cmdline())]
    return worker


def series(server: Server) -> int:
    text = requests.get(f"{server.url}/metrics", headers=AUTH, timeout=30).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_random_paths_cost_no_memory_and_no_series(servers):
    """Attack 1 over HTTP: 10,000 random paths without a key (401s)."""
    server, _ = servers
    worker = worker_of(server)
    with requests.Session() as session:
        for i in range(200):  # warm: allocator pools, the 401 path
            session.get(f"{server.url}/warm{i}", timeout=30)
        before_series, before_rss = series(server), worker.memory_info().rss
        for _ in range(10_000):
            session.get(f"{server.url}/{''.join(random.choices(string.ascii_lowercase, k=16))}", timeout=30)
        grown = (worker.memory_info().rss - before_rss) / MiB
    assert series(server) == before_series
    assert grown < 5, f"the worker grew by {grown:.1f} MiB"
    assert "random" not in requests.get(f"{server.url}/metrics", headers=AUTH, timeout=30).text


class PeakMemory:
    """The highest RSS of ``process`` while the ``with`` block runs, sampled every 20 ms."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.idle = self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("count", [32, 3])
def test_costly_images_do_not_starve_a_normal_photo(servers, count):
    """Attack 2 over HTTP: two requests of ``count`` 16-bit 6000x6000 PNGs (70 KB each, 288 MB each
    to decode) in flight; a normal photo is answered within 1 s, and the worker stays within 1 GB
    of its idle memory. 32 are over the request's decode budget (413 naming it, at once); 3 are
    decoded, one at a time, within the worker's decoding memory (512 MiB)."""
    server, _ = servers
    gray16 = files.sixteen_bit_gray_png(6000, 6000, value=0)
    costly = [("images", (f"{i}.png", gray16)) for i in range(count)]
    photo = files.encode(files.photo((640, 480), seed=3), "JPEG", quality=90)

    def post(parts):
        return requests.post(f"{server.url}/classify", files=parts, headers=AUTH, timeout=120)

    with PeakMemory(worker_of(server)) as memory, concurrent.futures.ThreadPoolExecutor(2) as pool:
        attacks = [pool.submit(post, costly) for _ in range(2)]
        time.sleep(0.2)
        started = time.monotonic()
        normal = post([("images", ("photo.jpg", photo))])
        normal_s = time.monotonic() - started
        answers = [attack.result() for attack in attacks]
    assert normal.status_code == 200 and normal_s < 1.0, (normal.status_code, normal_s)
    grown_mib = (memory.peak - memory.idle) / MiB
    assert grown_mib < 1000, grown_mib
    print(f"\n{count} costly images x 2: normal photo {normal_s:.2f} s, worker +{grown_mib:.0f} MiB at most")
    for answer in answers:
        if count == 32:
            assert answer.status_code == 413 and "CONVZOO_MAX_REQUEST_DECODE_BYTES" in answer.json()["error"]
        else:
            assert answer.status_code == 200, answer.text
            assert grown_mib < 512 + 150  # CONVZOO_DECODE_MEMORY_BYTES, and the uploads and arrays


def test_a_huge_metadata_body_is_refused_before_it_is_read(servers):
    """Attack 4 over HTTP: 200 MB announced to /metadata: 413 at once, nothing read."""
    server, _ = servers
    worker = worker_of(server)
    before = worker.memory_info().rss
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/metadata")
    for name, value in {**AUTH, "Content-Type": "application/json", "Content-Length": "200000000"}.items():
        connection.putheader(name, value)
    connection.endheaders(b'{"x": "' + b"a" * 65536)
    response = connection.getresponse()
    assert response.status == 413 and "CONVZOO_MAX_BODY_BYTES" in json.loads(response.read())["error"]
    connection.close()
    assert (worker.memory_info().rss - before) / MiB < 20


def test_a_large_refused_form_gets_its_answer_not_a_reset(servers):
    """Attack 8a over HTTP: 5,000 parts (refused at the 1001st), and a 1 MB field name, each with
    40 MB still to come: the client, which sends its whole body before it reads, sees the 400 and
    its JSON reason, never a connection reset."""
    server, _ = servers
    rest = [("images", "b.jpg", b"x" * 40 * MiB)]
    many_parts = multipart([("images", "a.jpg", b"x")] + [("note", None, b"1")] * 5000 + rest)
    long_name = multipart([("n" * MiB, None, b"1")] + rest)
    for body in (many_parts, long_name, many_parts):
        answer = requests.post(
            f"{server.url}/classify",
            data=body,
            headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            timeout=60,
        )
        assert answer.status_code in (400, 413) and answer.json()["error"]


def _stalled(port: int) -> socket.socket:
    """A connection that announced 100 bytes of body and sent one."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        f"POST /metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    return connection


def test_stalled_bodies_are_cut_and_hold_no_slot(servers):
    """Attack 8b over HTTP: more stalled bodies than CONVZOO_MAX_CONCURRENCY (4): a normal request
    is still served meanwhile, and each stalled one gets 408 after CONVZOO_BODY_TIMEOUT_S (3 s)."""
    server, _ = servers
    stalled = [_stalled(server.port) for _ in range(6)]
    try:
        time.sleep(0.5)
        answer = requests.post(f"{server.url}/metadata", json={}, headers=AUTH, timeout=30)
        assert answer.status_code == 200
        started = time.monotonic()
        for connection in stalled:
            reply = b""
            while chunk := connection.recv(4096):  # until the server closes the connection
                reply += chunk
            reply = reply.decode("latin-1")
            assert reply.startswith("HTTP/1.1 408"), reply
            assert "CONVZOO_BODY_TIMEOUT_S" in reply
        assert time.monotonic() - started < 10
    finally:
        for connection in stalled:
            connection.close()


def test_forwarded_headers_are_not_believed_from_an_unconfigured_peer(servers):
    """Attack 7: X-Forwarded-Proto / -For from any peer on 127.0.0.1 were believed."""
    server, _ = servers
    headers = {**AUTH, "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    description = requests.get(f"{server.url}/docs.json", headers=headers, timeout=30).json()["info"][
        "description"
    ]
    assert f"curl -F images=@photo.jpg http://127.0.0.1:{server.port}/classify" in description
    page = requests.get(
        f"{server.url}/ui", headers={"Host": "evil.example"}, allow_redirects=False, timeout=30
    )
    assert page.status_code in (301, 307, 308) and page.headers["location"] == "/ui/"


def test_forwarded_headers_are_believed_from_a_configured_proxy(servers):
    _, second = servers
    headers = {"X-Forwarded-Proto": "https", "Host": "models.example.org"}
    description = requests.get(f"{second.url}/docs.json", headers=headers, timeout=30).json()["info"][
        "description"
    ]
    assert "curl -F images=@photo.jpg https://models.example.org/classify" in description


def test_the_upload_guard_and_the_parser_read_the_same_form(servers):
    """Attack 3 over HTTP: a charset that renames a text field into ``images``, and two
    Content-Type headers; each a 400 naming the problem, and no URL is ever fetched."""
    server, _ = servers
    url_part = multipart([("+AGk-mages", None, b"http://example.com/a.jpg")])
    answer = requests.post(
        f"{server.url}/classify",
        data=url_part,
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}; charset=utf-7"},
        timeout=30,
    )
    assert answer.status_code == 400 and "charset" in answer.json()["error"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = multipart([("images", None, b"http://example.com/a.jpg")])
    connection.putrequest("POST", "/classify")
    connection.putheader("Authorization", AUTH["Authorization"])
    connection.putheader("Content-Type", "application/x-www-form-urlencoded")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    assert response.status == 400 and "more than one Content-Type" in json.loads(response.read())["error"]
    connection.close()


def test_metadata_over_http_shows_no_absolute_path(servers):
    server, _ = servers
    metadata = requests.post(f"{server.url}/metadata", json={}, headers=AUTH, timeout=30).json()
    shown = json.dumps(metadata)
    assert "/work/" not in shown and "/tmp/" not in shown and '"device"' not in shown
    assert metadata["limits"]["max_request_decode_bytes"] == MAX_REQUEST_DECODE_BYTES


def test_refusals_are_logged_in_one_line_without_traceback(servers):
    """Attack 6 over HTTP: each guard refusal wrote a 27-line ClientDisconnect traceback."""
    server, _ = servers
    marker = uuid.uuid4().hex
    for _ in range(3):
        requests.post(
            f"{server.url}/classify",
            data=multipart([("image", "a.jpg", b"x")]),
            headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "X-Marker": marker},
            timeout=30,
        )
    time.sleep(0.5)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "ClientDisconnect" not in log
    refusals = [
        line for line in log.splitlines() if "refused POST /classify" in line and "field 'image'" in line
    ]
    assert len(refusals) >= 3 and all("127.0.0.1" in line for line in refusals)


def test_two_servers_on_one_host_serve_their_own_metrics(servers):
    """Attack 10: the second server emptied the shared Prometheus folder at start, and the first
    then served the second's metrics."""
    first, second = servers
    for _ in range(3):
        assert requests.get(f"{second.url}/schema.json", timeout=30).status_code == 200

    def schema_requests(server: Server, headers: dict) -> float:
        text = requests.get(f"{server.url}/metrics", headers=headers, timeout=30).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if "_request_total{" in line and 'endpoint="/schema.json"' in line
        )

    assert schema_requests(second, {}) >= 3
    assert schema_requests(first, AUTH) == 0
    assert requests.post(f"{first.url}/metadata", json={}, headers=AUTH, timeout=30).status_code == 200
    assert schema_requests(first, AUTH) == 0
