"""The guards in front of every route: API key, body size and time, and a well-formed upload.

BentoML 1.4 has no request-size setting, reads a body with no time limit, and parses a multipart
body fully before the API function runs, answering 500 for some malformed forms (a file in an
unknown field) and fetching a *text* value of a file field as a URL. ``RequestGuard`` reads every
request's body itself, bounded in size and time, checks it, and only then hands it to the app in
one piece (a refused body never reaches BentoML, so nothing there logs a traceback for it):

- 413 when the Content-Length exceeds the route's limit (nothing of the body is read), or when a
  body without Content-Length (chunked) grows past it (reading stops there): ``max_upload_bytes``
  for the upload route and for a body in the binary data extension on the routes that take it
  (``binary_paths``, with ``Inference-Header-Content-Length``), ``max_json_bytes`` for a tensor
  route's JSON body
  (``tensor_paths``: parsing JSON takes up to ~25 times its size, ``service.serving.jsonbody.json_memory``),
  ``max_body_bytes`` (a JSON ``{}``) for every other route;
- 408 when the client sends no part of the body for ``body_timeout_s``, or not all of it within
  ``body_deadline_s`` (the request timeout; the connection closes). While it waits for a body, a
  request holds no concurrency slot of BentoML (``service.http.app`` puts the guards in front);
- 503 when the bodies held by all requests of the process would pass ``max_buffered_bytes``
  (a request waiting for its body holds only what it sent, so many slow clients cost little);
- 400 for a request with two Content-Type headers (Starlette, BentoML and a guard could each read
  another one);
- on the upload route: 415 when the Content-Type is not ``multipart/form-data`` with a boundary,
  400 with a ``charset`` parameter (Starlette would decode the field names with it, so a part
  named ``+AGk-mages`` in UTF-7 would become ``images``), and 400 when the form is malformed, has
  no ``file_field`` part, has a text value in ``file_field`` (BentoML would fetch it as a URL), a
  file in another field, a part without a name, a text value over 1 MiB or more than 1000 parts
  (what Starlette's parser, called by BentoML, would fail on with a 500). A form refused in the
  middle is read to its end (within the limit) before the answer, so the client, still sending,
  gets the JSON answer and not a connection reset.

The guard also counts the requests the process is answering in ``activity``
(``service.serving.activity``: the batcher runs a lone request at once, without its thread). Every refusal
is one log line: status, reason, client and route. Redirects are relative
(``Location: /ui/``, never built from the client's Host header).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from python_multipart.multipart import parse_options_header

from service.http.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    ascii_int,
    log_refusal,
    relative_redirects,
)
from service.http.forms import BODY, FORM, RAW_IMAGE_TYPES, FormInspector, ParsedForm
from service.serving.activity import Activity
from service.serving.errors import ServiceError, send_error


class RequestGuard:
    """Reads, bounds and checks every HTTP request's body before the app sees it (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        upload_path: str,
        file_field: str,
        tensor_paths: tuple[str, ...] = (),
        binary_paths: tuple[str, ...] = (),
        max_upload_bytes: int,
        max_body_bytes: int,
        max_json_bytes: int | None = None,
        body_timeout_s: float,
        body_deadline_s: float = 60,
        max_buffered_bytes: int = 256 * 1024 * 1024,
        activity: Activity | None = None,
    ) -> None:
        self.app = app
        self.activity = activity or Activity()
        self.upload_path = upload_path
        self.file_field = file_field
        self.tensor_paths = tensor_paths
        self.binary_paths = binary_paths
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_upload_bytes if max_json_bytes is None else max_json_bytes
        self.body_timeout_s = body_timeout_s
        self.body_deadline_s = body_deadline_s
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered = 0  # bytes of bodies held now, all requests together

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = relative_redirects(send)
        held = [0]  # bytes of this request's body counted in self.buffered, until it is answered
        with self.activity.request():
            try:
                try:
                    body = await self._read(scope, receive, held)
                except ServiceError as refusal:
                    log_refusal(scope, refusal)
                    await send_error(send, refusal)
                    return
                await self.app(scope, _replay(body, receive), send)
            finally:
                self.buffered -= held[0]

    async def _read(self, scope: Scope, receive: Receive, held: list[int]) -> bytes:
        """The whole body, once it passed every check; ``ServiceError`` otherwise."""
        content_types, length, binary_data = _body_headers(scope)
        if len(content_types) > 1:
            raise ServiceError(400, "more than one Content-Type header: send exactly one", kind="bad_header")
        form_upload = scope["method"] == "POST" and scope["path"] == self.upload_path
        tensors = scope["method"] == "POST" and scope["path"].startswith(self.tensor_paths)
        binary_data = binary_data and scope["path"].startswith(self.binary_paths)
        route = "upload" if form_upload or (tensors and binary_data) else "json" if tensors else "body"
        limit, _ = self._limit(route)
        content_type = content_types[0] if content_types else b""
        raw = form_upload and content_type.split(b";")[0].strip().lower().startswith(RAW_IMAGE_TYPES)
        form = self._form(content_type) if form_upload and not raw else None
        declared = ascii_int(length)  # uvicorn checked it is a number; None: chunked
        if declared is not None and declared > limit:
            raise ServiceError(413, self._too_large(declared, route), headers=[(b"connection", b"close")])
        chunks: list[bytes] = []
        received = 0
        more = True
        task = asyncio.current_task()
        cancelling = task.cancelling()
        timer = BodyTimer(task, self.body_timeout_s, self.body_deadline_s)
        try:
            while more:
                message = await receive()
                timer.last = timer.loop.time()
                if message["type"] != "http.request":  # the client went away
                    raise ServiceError(400, "the client closed the connection before the end of the body")
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                received += len(chunk)
                if received > limit:
                    raise ServiceError(
                        413, self._too_large(received, route), headers=[(b"connection", b"close")]
                    )
                if self.buffered + len(chunk) > self.max_buffered_bytes:
                    raise ServiceError(
                        503,
                        f"the server holds {self.buffered} bytes of request bodies already, its limit "
                        f"is {self.max_buffered_bytes} (CONVZOO_MAX_BUFFERED_BYTES): try again shortly",
                        [(b"connection", b"close"), (b"retry-after", b"1")],
                    )
                self.buffered += len(chunk)
                held[0] += len(chunk)
                chunks.append(chunk)
        except asyncio.CancelledError:
            if not timer.expired or task.uncancel() > cancelling:  # not the timer's: as asyncio.timeout
                raise
            if timer.loop.time() >= timer.deadline:
                reason = f"the request body took longer than {self.body_deadline_s:g} s (CONVZOO_TIMEOUT_S)"
            else:
                idle = self.body_timeout_s
                reason = f"no part of the request body arrived for {idle:g} s (CONVZOO_BODY_TIMEOUT_S)"
            raise ServiceError(408, reason, headers=[(b"connection", b"close")]) from None
        finally:
            timer.cancel()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if form is not None:
            problem = form.feed_body(body)
            if problem:
                raise ServiceError(400, problem)
            scope[FORM] = form.form()
            self.buffered += len(body)  # the parsed copy of the files is held too, until the answer
            held[0] += len(body)
        elif tensors:
            scope[BODY] = body
        elif raw:
            if not body:
                raise ServiceError(400, "the body is empty: send the image file as the body")
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            scope[FORM] = ParsedForm([("body", body)], query)
        return body

    def _form(self, content_type_header: bytes) -> FormInspector:
        content_type, options = parse_options_header(content_type_header)
        if content_type != b"multipart/form-data" or not options.get(b"boundary"):
            shown = content_type_header.decode("latin-1") or "(none)"
            raise ServiceError(
                415,
                f"unsupported content type {shown!r}: send the images as multipart/form-data "
                f"in the field '{self.file_field}'",
            )
        if set(options) - {b"boundary"}:
            names = ", ".join(sorted(o.decode("latin-1") for o in options if o != b"boundary"))
            raise ServiceError(
                400,
                f"multipart/form-data takes a boundary and nothing else (got {names}); "
                "field names are read as UTF-8",
            )
        return FormInspector(options[b"boundary"], self.file_field)

    def _limit(self, route: str) -> tuple[int, str]:
        """The body limit of a kind of request, and its setting."""
        if route == "upload" or (route == "json" and self.max_upload_bytes < self.max_json_bytes):
            return self.max_upload_bytes, "CONVZOO_MAX_REQUEST_BYTES"
        if route == "json":
            return self.max_json_bytes, "CONVZOO_MAX_JSON_BYTES"
        return self.max_body_bytes, "CONVZOO_MAX_BODY_BYTES"

    def _too_large(self, size: int, route: str) -> str:
        limit, setting = self._limit(route)
        return f"request body of {size}+ bytes exceeds the limit of {limit} bytes ({setting})"


class BodyTimer:
    """The time limits of one body being read: cancels ``task`` once no part of it has arrived for
    ``idle_s`` seconds (``last``: when the last part came), or ``deadline_s`` seconds after it
    started. One timer per body, moved on only when it fires early (not once per part, as
    ``asyncio.timeout``'s ``reschedule`` would)."""

    __slots__ = ("deadline", "expired", "handle", "idle_s", "last", "loop", "task")

    def __init__(self, task: asyncio.Task, idle_s: float, deadline_s: float) -> None:
        self.task = task
        self.loop = task.get_loop()
        self.idle_s = idle_s
        self.last = self.loop.time()
        self.deadline = self.last + deadline_s
        self.expired = False
        self.handle = self.loop.call_at(min(self.last + idle_s, self.deadline), self._fire)

    def _fire(self) -> None:
        due = min(self.last + self.idle_s, self.deadline)
        if self.loop.time() < due:  # a part came meanwhile: wait on from it
            self.handle = self.loop.call_at(due, self._fire)
            return
        self.expired = True
        self.task.cancel()

    def cancel(self) -> None:
        self.handle.cancel()


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the whole body at once, then whatever the client does next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _body_headers(scope: Scope) -> tuple[list[bytes], bytes, bool]:
    """The request's Content-Type values, its first Content-Length (b"" without), and whether it
    uses the Open Inference Protocol's binary data extension (JSON, then bytes)."""
    content_types: list[bytes] = []
    length = b""
    binary_data = False
    for key, value in scope["headers"]:
        key = key.lower()
        if key == b"content-type":
            content_types.append(value)
        elif key == b"content-length":
            length = length or value
        elif key == b"inference-header-content-length":
            binary_data = True
    return content_types, length, binary_data
