"""Issue #24, "Hardening": each attack found against the service, as a test.

In process (the attack is a request): the guards of ``service.http.body`` (body limits on every
route, the 408 for a stalled body, the form read to its end before a refusal, the Content-Type
tricks that would turn a text value into a URL BentoML fetches, relative redirects, one log line
per refusal), the metrics labels of ``service.http.app.RouteLabels``, what ``/metadata`` shows
(``service.answers.public_metadata``), the docs' URL and the decode budget. The attacks that
are memory or time run against real servers in tests/test_hardening_served.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from pathlib import Path

import pytest
import service_files as files
from helpers import REPO
from service_files import BOUNDARY, multipart
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from service import repository
from service.answers import public_metadata, strip_paths
from service.config import Limits, ServiceConfig
from service.http.app import OTHER, RouteLabels
from service.http.auth import ApiKeyGuard
from service.http.body import RequestGuard
from service.http.openapi import request_url
from service.serving.dataplane import DecodeMemory
from service.serving.errors import ServiceError
from service.serving.images import Resize, open_upload
from service.serving.limits import check_decode_budget
from service.serving.requests import Upload

MiB = 1024 * 1024
KEY = f"hardening-{secrets.token_hex(8)}"
AUTH = {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------------------------- in process


class Recorder:
    """An app behind the guard that records what reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append((scope["path"], body))
        await JSONResponse({"ok": True})(scope, receive, send)


def guard(app, **options) -> RequestGuard:
    settings = {
        "upload_path": "/classify",
        "file_field": "images",
        "max_upload_bytes": 4 * MiB,
        "max_body_bytes": 1024,
        "body_timeout_s": 0.5,
        **options,
    }
    return RequestGuard(app, **settings)


async def call(
    app, method, path, headers: list[tuple[bytes, bytes]], chunks: list[bytes], stall=False, pace=0.0
):
    """One request through ``app`` at the ASGI level: its status, headers, body, and how many
    of ``chunks`` the app (the guard) read. ``stall``: after the chunks, the client sends nothing;
    ``pace``: seconds between chunks."""
    consumed = 0
    answer: dict = {"headers": [], "body": b""}

    async def receive():
        nonlocal consumed
        if consumed < len(chunks):
            await asyncio.sleep(pace)
            consumed += 1
            return {
                "type": "http.request",
                "body": chunks[consumed - 1],
                "more_body": consumed < len(chunks) or stall,
            }
        await asyncio.sleep(3600)  # a stalled client, then one that never disconnects

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = message.get("headers", [])
        else:
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.9", 4242),
        "server": ("127.0.0.1", 3000),
        "scheme": "http",
        "root_path": "",
    }
    await app(scope, receive, send)
    return answer["status"], dict(answer["headers"]), answer["body"], consumed


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_charset_on_the_form_cannot_rename_a_field_into_images(caplog):
    """Attack 3a: ``charset=utf-7`` and a text part named ``+AGk-mages`` (Starlette would decode
    it as ``images``, and BentoML would fetch its value as a URL)."""
    app = Recorder()
    body = multipart([("+AGk-mages", None, b"http://127.0.0.1:9/a.jpg")])
    content_type = f"multipart/form-data; boundary={BOUNDARY}; charset=utf-7".encode()
    status, _, answer, _ = run(
        call(guard(app), "POST", "/classify", [(b"content-type", content_type)], [body])
    )
    assert status == 400 and "charset" in json.loads(answer)["error"]
    assert app.calls == []


def test_two_content_type_headers_are_refused():
    """Attack 3b: the guard, Starlette and BentoML must never read different Content-Types."""
    app = Recorder()
    body = multipart([("images", None, b"http://127.0.0.1:9/a.jpg")])
    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
    ]
    status, _, answer, _ = run(call(guard(app), "POST", "/classify", headers, [body]))
    assert status == 400 and "more than one Content-Type" in json.loads(answer)["error"]
    assert app.calls == []


def test_images_never_takes_a_text_value():
    app = Recorder()
    body = multipart([("images", None, b"https://example.com/a.jpg")])
    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    status, _, answer, _ = run(call(guard(app), "POST", "/classify", headers, [body]))
    assert status == 400 and "not text" in json.loads(answer)["error"] and app.calls == []


def test_every_route_has_a_body_limit():
    """Attack 4: a JSON body to /metadata is bounded too: by its Content-Length before anything
    is read, and while it streams without one."""
    app = Recorder()
    json_type = (b"content-type", b"application/json")
    status, headers, answer, consumed = run(
        call(guard(app), "POST", "/metadata", [json_type, (b"content-length", b"200000000")], [b"{}"])
    )
    assert status == 413 and "CONVZOO_MAX_BODY_BYTES" in json.loads(answer)["error"] and consumed == 0
    status, _, answer, _ = run(call(guard(app), "POST", "/metadata", [json_type], [b" " * 600] * 4))
    assert status == 413 and app.calls == []
    assert run(call(guard(app), "POST", "/metadata", [json_type], [b"{}"]))[0] == 200
    assert app.calls == [("/metadata", b"{}")]


def test_a_stalled_body_is_cut_with_408():
    """Attack 8b: Content-Length larger than what is sent: 408 after the body timeout, and the
    connection closes."""
    app = Recorder()
    started = time.monotonic()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    status, answer_headers, answer, _ = run(
        call(guard(app), "POST", "/metadata", headers, [b"{"], stall=True)
    )
    assert status == 408 and "CONVZOO_BODY_TIMEOUT_S" in json.loads(answer)["error"]
    assert answer_headers[b"connection"] == b"close"
    assert time.monotonic() - started < 5 and app.calls == []


def test_a_trickled_body_is_cut_at_the_request_timeout():
    """A client sending a byte now and then, each within the body timeout, still gets 408 when the
    whole body takes longer than the request timeout."""
    app = Recorder()
    headers = [(b"content-type", b"application/json")]
    started = time.monotonic()
    status, _, answer, consumed = run(
        call(guard(app, body_deadline_s=0.5), "POST", "/metadata", headers, [b" "] * 100, pace=0.05)
    )
    assert status == 408 and "CONVZOO_TIMEOUT_S" in json.loads(answer)["error"]
    assert consumed < 100 and time.monotonic() - started < 2 and app.calls == []


def test_a_form_refused_midway_is_read_to_its_end_before_the_answer():
    """Attack 8a: 5,000 parts, and a 1 MB field name: the guard keeps reading (and dropping) the
    body to its end, so the client, still sending, receives the JSON answer instead of a reset."""
    app = Recorder()
    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    many = multipart([("images", "a.jpg", b"x")] + [("note", None, b"1")] * 5000)
    chunks = [many[i : i + 4096] for i in range(0, len(many), 4096)]
    status, _, answer, consumed = run(call(guard(app), "POST", "/classify", headers, chunks))
    assert status == 400 and "1000" in json.loads(answer)["error"]
    assert consumed == len(chunks) and app.calls == []
    long_name = multipart([("n" * MiB, None, b"1"), ("images", "a.jpg", b"x")])
    chunks = [long_name[i : i + 65536] for i in range(0, len(long_name), 65536)]
    status, _, answer, consumed = run(call(guard(app), "POST", "/classify", headers, chunks))
    assert status in (400, 413) and json.loads(answer)["error"] and consumed == len(chunks)


def test_a_refusal_is_one_log_line_with_reason_client_and_route(caplog):
    """Attack 6: one line (status, reason, client, route), never a traceback."""
    app = Recorder()
    headers = [(b"content-type", b"text/plain")]
    with caplog.at_level(logging.INFO, logger="bentoml.convzoo"):
        status, *_ = run(call(guard(app), "POST", "/classify", headers, [b"hello"]))
    assert status == 415
    [record] = [r for r in caplog.records if r.name == "bentoml.convzoo"]
    line = record.getMessage()
    assert "\n" not in line and record.exc_info is None
    assert (
        "415" in line and "unsupported content type" in line and "203.0.113.9" in line and "/classify" in line
    )


def test_a_refusal_line_escapes_and_cuts_what_the_client_sent(caplog):
    """A percent-encoded newline in the path cannot forge a second log line; a long path is cut."""
    app = Recorder()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100000000")]
    with caplog.at_level(logging.INFO, logger="bentoml.convzoo"):
        status, *_ = run(call(guard(app), "POST", "/x\nFAKE refused line" + "a" * 5000, headers, [b"{}"]))
    assert status == 413
    [record] = [r for r in caplog.records if r.name == "bentoml.convzoo"]
    line = record.getMessage()
    assert "\n" not in line and "\\nFAKE" in line and len(line) < 1000


def test_redirects_are_relative_whatever_the_host_header():
    """Attack 7: ``GET /ui`` with ``Host: evil.example`` redirected to http://evil.example/ui/."""
    page = Starlette(routes=[Route("/", lambda request: PlainTextResponse("page"))])
    app = Starlette(routes=[Mount("/ui", app=page)])
    headers = [(b"host", b"evil.example")]
    status, answer_headers, _, _ = run(call(guard(app), "GET", "/ui", headers, [b""]))
    assert status in (301, 307, 308) and answer_headers[b"location"] == b"/ui/"


def test_the_api_page_and_its_files_open_without_a_key_but_not_the_description():
    """Attack 9's fix: the /ui/ page's "API documentation" link (``/``) loads with a key set; the
    page then asks /docs.json with the key the browser page keeps (``static/api.js``)."""
    app = ApiKeyGuard(Recorder(), key=KEY)
    for path in ("/", "/static_content/swagger-ui.css", "/ui/", "/ui/api.js"):
        assert run(call(app, "GET", path, [], [b""]))[0] == 200, path
    assert run(call(app, "GET", "/docs.json", [], [b""]))[0] == 401
    assert run(call(app, "POST", "/", [], [b""]))[0] == 401
    authorization = [(b"authorization", f"Bearer {KEY}".encode())]
    assert run(call(app, "GET", "/docs.json", authorization, [b""]))[0] == 200
    page = (REPO / "service" / "static" / "api.html").read_text()
    script = (REPO / "service" / "static" / "api.js").read_text()
    assert './ui/api.js"' in page and "swagger-initializer" not in page
    assert 'sessionStorage.getItem("convzoo-api-key")' in script and "Authorization" in script
    assert '"convzoo-api-key"' in (REPO / "service" / "static" / "ui.js").read_text()


class CapturingMetrics:
    """Stands for BentoML's metrics middleware: records the path it would label."""

    seen: list[str] = []

    def __init__(self, app, **options) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        CapturingMetrics.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_metrics_are_labelled_by_route_never_by_raw_path():
    """Attack 1: a label value per requested path grew memory without bound."""
    reached: list[str] = []

    async def endpoint(request: Request):
        reached.append(request.url.path)
        return PlainTextResponse("ok")

    page = Starlette(routes=[Route("/{name:path}", endpoint)])
    app = Starlette(routes=[Route("/classify", endpoint, methods=["POST"]), Mount("/ui", app=page)])
    labelled = RouteLabels(app, metrics=CapturingMetrics, router=app.router)
    CapturingMetrics.seen = []
    for path in ("/classify", "/ui/ui.js", "/" + "a" * 60000, "/x1", "/classify/../metrics"):
        run(call(labelled, "POST" if path == "/classify" else "GET", path, [], [b""]))
    assert CapturingMetrics.seen == ["/classify", "/ui", OTHER, OTHER, OTHER]
    assert reached == ["/classify", "/ui/ui.js"]  # the app still sees the real path


def test_route_labels_remember_a_bounded_number_of_paths():
    """The labels of paths that are no route's own (``/v2/models/<name>/infer``) are remembered,
    so that a request does not walk every route; any client may ask for any path, so at most
    ``MAX_SEEN_PATHS`` short ones, and the labels stay right when they are forgotten."""
    from service.http.app import MAX_SEEN_PATH_LENGTH, MAX_SEEN_PATHS

    async def endpoint(request: Request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/classify", endpoint, methods=["POST"]), Mount("/v2", app=Starlette())])
    labelled = RouteLabels(app, metrics=CapturingMetrics, router=app.router)

    def label(path: str) -> str:
        return labelled.label({"type": "http", "method": "POST", "path": path, "root_path": ""})

    paths = [f"/v2/models/m{i}/infer" for i in range(3 * MAX_SEEN_PATHS)] + ["/v2/" + "a" * 60000, "/x"]
    assert [label(p) for p in paths] == ["/v2"] * (len(paths) - 1) + [OTHER]
    assert [label(p) for p in paths[:3]] == ["/v2"] * 3 and label("/classify") == "/classify"
    assert len(labelled.seen) <= MAX_SEEN_PATHS
    assert max(map(len, labelled.seen)) <= MAX_SEEN_PATH_LENGTH


def test_the_inline_timeout_answers_as_bentomls_timeout_middleware():
    """``InlineTimeout`` in place of BentoML's ``TimeoutMiddleware``: the same 504 for a request
    that sent nothing in time (its app cancelled), the same answer for one that did, no time limit
    once the answer started, and an app's own ``TimeoutError`` is not taken for the timeout."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from service.http.answering import InlineTimeout

    cancelled: list[str] = []

    async def app(scope, receive, send):
        if scope["path"] == "/own":
            raise TimeoutError("the app's own")
        if scope["path"] in ("/slow", "/slow-after-start"):
            try:
                if scope["path"] == "/slow-after-start":
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                await asyncio.sleep(0.3)
            except asyncio.CancelledError:
                cancelled.append(scope["path"])
                raise
            if scope["path"] == "/slow-after-start":
                await send({"type": "http.response.body", "body": b"late"})
                return
        await JSONResponse({"ok": scope["path"]})(scope, receive, send)

    async def answers(middleware):
        timed = middleware(app, timeout=0.1)
        return [await call(timed, "GET", path, [], [b""]) for path in ("/fast", "/slow", "/slow-after-start")]

    theirs, ours = run(answers(TimeoutMiddleware)), run(answers(InlineTimeout))
    assert ours == theirs
    assert ours[1][0] == 504 and json.loads(ours[1][2]) == {
        "error": "Not able to process the request in 0.1 seconds"
    }
    assert ours[2][:3:2] == (200, b"late")
    assert cancelled == ["/slow", "/slow"]  # each one's app was cancelled, not left running
    with pytest.raises(TimeoutError, match="the app's own"):
        run(call(InlineTimeout(app, timeout=5), "GET", "/own", [], [b""]))


def test_metadata_shows_no_path_and_no_training_machine():
    """Attack 5: the shipped metadata named the folders of the machines that trained and optimized
    the default model, and its GPU."""
    folder = REPO / "models" / "imagenette" / str(repository.latest_version(REPO / "models", "imagenette"))
    shown = json.dumps(public_metadata(repository.read_metadata(folder)))
    assert "/work/" not in shown and "/tmp/" not in shown and "/home/" not in shown
    assert '"device"' not in shown and '"run":' not in shown
    assert strip_paths("--data /srv/data/imagenette2-train --runs-dir=/tmp/runs") == (
        "--data imagenette2-train --runs-dir=runs"
    )
    assert strip_paths(["openvino/int8", "https://example.com/a/b", "C:\\Users\\me\\data"]) == [
        "openvino/int8",
        "https://example.com/a/b",
        "data",
    ]
    assert public_metadata({"labels": ["/m/01", "cat"]})["labels"] == ["/m/01", "cat"]


def test_docs_examples_name_the_address_the_client_used():
    """Issue #25: /docs.json's curl examples said localhost:3000 whatever the port."""

    def scope(host: bytes, scheme: str = "http") -> dict:
        return {"headers": [(b"host", host)] if host else [], "scheme": scheme, "server": ("10.0.0.5", 8080)}

    assert request_url(scope(b"127.0.0.1:38017")) == "http://127.0.0.1:38017"
    assert request_url(scope(b"models.example.org", "https")) == "https://models.example.org"
    assert request_url(scope(b"[::1]:3001")) == "http://[::1]:3001"
    assert request_url(scope(b"evil.example/<script>")) == "http://10.0.0.5:8080"
    assert request_url(scope(b"")) == "http://10.0.0.5:8080"


def test_the_decode_budget_refuses_costly_requests_before_decoding():
    """Attack 2, in process: 32 16-bit 6000x6000 PNGs of 70 KB each cost 9 GB to decode."""
    gray16 = files.sixteen_bit_gray_png(6000, 6000, value=0)
    assert len(gray16) < 100_000
    cost, image = open_upload(gray16, Resize(128, 128))
    image.close()
    assert cost >= 6000 * 6000 * 2 * 3  # counted at 16 bits, plus the RGB result
    limits = ServiceConfig().limits
    uploads = [Upload(f"{i}.png", gray16) for i in range(32)]
    with pytest.raises(ServiceError) as refusal:
        check_decode_budget(uploads, [cost] * 32, limits)
    assert refusal.value.status == 413 and "CONVZOO_MAX_REQUEST_DECODE_BYTES" in refusal.value.message
    with pytest.raises(ServiceError) as refusal:
        check_decode_budget(uploads[:1], [cost], Limits(max_image_decode_bytes=cost - 1))
    assert (
        refusal.value.status == 413
        and "CONVZOO_MAX_IMAGE_DECODE_BYTES" in refusal.value.details["files"][0]["reason"]
    )
    check_decode_budget(uploads[:2], [cost] * 2, limits)  # within both limits: no refusal


def test_decode_memory_bounds_what_concurrent_decodes_hold():
    memory = DecodeMemory(100)
    held: list[int] = []
    peak = 0

    async def decode(size: int) -> None:
        nonlocal peak
        async with memory.hold(size):
            held.append(min(size, memory.capacity))  # one larger than all runs alone
            peak = max(peak, sum(held))
            await asyncio.sleep(0.01)
            held.remove(min(size, memory.capacity))

    async def main() -> None:
        await asyncio.gather(*(decode(size) for size in (60, 60, 30, 10, 90, 150)))

    run(main())
    assert peak <= 100 and memory.free == 100


def test_the_library_environment_comes_from_the_settings(monkeypatch, tmp_path):
    """What uvicorn (forwarded headers), OpenTelemetry and prometheus_client read from the
    environment is set from ``service.config`` in each worker, before BentoML builds the app."""
    from service.http.app import metrics_folder, set_library_environment

    for name in ("OTEL_SDK_DISABLED", "FORWARDED_ALLOW_IPS", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    shared = tmp_path / "prometheus_multiproc_dir"
    shared.mkdir()
    dead = tmp_path / "prometheus_multiproc_dir.convzoo-999999999-1"  # a server no longer running
    dead.mkdir()
    (dead / "counter_1.db").write_bytes(b"")
    set_library_environment(ServiceConfig(bentoml_metrics_dir=str(shared)))
    assert os.environ["OTEL_SDK_DISABLED"] == "true"
    assert os.environ["FORWARDED_ALLOW_IPS"] == ""  # uvicorn then believes no peer
    own = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert (
        own.is_dir()
        and own.parent == tmp_path
        and own.name.startswith(f"{shared.name}.convzoo-{os.getppid()}-")
    )
    assert not dead.exists()
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    set_library_environment(ServiceConfig(otel_sdk_disabled="false", forwarded_allow_ips="10.0.0.2"))
    assert "OTEL_SDK_DISABLED" not in os.environ and os.environ["FORWARDED_ALLOW_IPS"] == "10.0.0.2"
    assert metrics_folder(ServiceConfig(metrics_dir=str(tmp_path / "mine"))) == tmp_path / "mine"
    assert metrics_folder(ServiceConfig()) is None
