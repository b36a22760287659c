"""An ASGI middleware that refuses malformed, mistyped or oversized uploads with a clear JSON answer.

BentoML 1.4 has no request-size setting, and it parses a multipart body fully before the API
function runs, answering 500 for some malformed forms (a file in an unknown field) and fetching a
*text* value of a file field as a URL. ``UploadGuard`` sits in front of the upload route and
watches the body as BentoML reads it (no buffering, no second copy):

- 415 when the Content-Type is not ``multipart/form-data``;
- 413 when the Content-Length exceeds ``max_bytes`` (nothing of the body is read), or when a
  body without Content-Length (chunked) grows past it (reading stops there);
- 400 when the form is malformed, has no ``file_field`` part, has a text value in ``file_field``,
  a file in another field, a part without a name, a text value over 1 MiB or more than 1000
  parts (what Starlette's parser, called by BentoML, would fail on with a 500). The check ends
  with the last body chunk, which BentoML then never receives: it stops with a disconnect, and its
  own answer is replaced by ours.

``ApiKeyGuard`` (on when ``CONVZOO_API_KEY`` is set) answers 401 to every request, on every path
but the health probes and the static browser page (``GET /ui/...``, which then asks for the key
itself), that lacks ``Authorization: Bearer <key>``. The key is compared in constant
time and never echoed: not in the answer, not in a log line.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT: Message = {"type": "http.disconnect"}
MAX_FORM_PARTS = 1000
MAX_TEXT_BYTES = 1024 * 1024
"""What Starlette's form parser (which BentoML calls with its defaults) accepts: 1000 files, 1000
text fields, 1 MiB per text value. Beyond, or on a part without a name, it raises and BentoML
answers 500; the guard refuses first, with a 400."""


class ApiKeyGuard:
    OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
    """Health probes stay open, so a load balancer or orchestrator needs no key."""
    OPEN_PAGE = "/ui"
    """The browser page (static files, ``service.ui``) loads without a key (GET and HEAD only):
    a browser cannot send the header before the page has asked for the key."""

    def __init__(self, app: ASGIApp, *, key: str) -> None:
        if not key:
            raise ValueError("ApiKeyGuard needs a non-empty key")
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "lifespan"
            or scope["path"] in self.OPEN_PATHS
            or self._is_page(scope)
            or self._allowed(scope)
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
        else:
            await _send_json(
                send,
                401,
                (
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                    "(the key the server was started with, CONVZOO_API_KEY)"
                ),
                headers=[(b"www-authenticate", b"Bearer")],
            )

    def _is_page(self, scope: Scope) -> bool:
        path = scope["path"]
        return (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and (path == self.OPEN_PAGE or path.startswith(self.OPEN_PAGE + "/"))
        )

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        scheme, _, token = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


class UploadGuard:
    def __init__(self, app: ASGIApp, *, path: str, file_field: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.file_field = file_field
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type, options = parse_options_header(headers.get("content-type", ""))
        if content_type != b"multipart/form-data" or not options.get(b"boundary"):
            await _send_json(
                send,
                415,
                (
                    f"unsupported content type {headers.get('content-type') or '(none)'!r}: send the "
                    f"images as multipart/form-data in the field '{self.file_field}'"
                ),
            )
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, self._too_large(int(length)))
            return
        form = FormInspector(options[b"boundary"], self.file_field)
        await self._watched(scope, receive, send, form)

    async def _watched(self, scope: Scope, receive: Receive, send: Send, form: FormInspector) -> None:
        """Run the app on the body while counting and inspecting it; answer for it if needed."""
        received = 0
        refusal: tuple[int, str] | None = None

        async def watched_receive() -> Message:
            nonlocal received, refusal
            if refusal:
                return DISCONNECT
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                refusal = (413, self._too_large(received))
            elif problem := form.feed(chunk, last=not message.get("more_body", False)):
                refusal = (400, problem)
            return DISCONNECT if refusal else message

        async def guarded_send(message: Message) -> None:
            if not refusal:  # after a refusal the app's own (error) answer is dropped
                await send(message)

        try:
            await self.app(scope, watched_receive, guarded_send)
        except Exception:
            if not refusal:  # an app that raises on the disconnect we fed it: answer for it
                raise
        if refusal:
            await _send_json(send, *refusal)

    def _too_large(self, size: int) -> str:
        return (
            f"request body of {size}+ bytes exceeds the limit of {self.max_bytes} bytes "
            "(CONVZOO_MAX_REQUEST_BYTES)"
        )


class FormInspector:
    """Streams a multipart body through a parser that looks only at each part's headers."""

    def __init__(self, boundary: bytes, file_field: str) -> None:
        self.file_field = file_field
        self.files = 0
        self.fields = 0
        self.problem: str | None = None
        self._text_bytes: int | None = None  # size of the current part, if it is a text value
        self._field = b""
        self._value = b""
        self._disposition = b""
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
            },
        )

    def feed(self, chunk: bytes, last: bool) -> str | None:
        """Parse one chunk; the first problem found, once known (at the latest with the last)."""
        try:
            self._parser.write(chunk)
            if last:
                self._parser.finalize()
        except Exception as error:
            self.problem = self.problem or f"malformed multipart body ({error})"
        if last and not self.problem and self.files == 0:
            self.problem = (
                f"no files in the field '{self.file_field}': send one or more images "
                f"as multipart/form-data, e.g. curl -F {self.file_field}=@photo.jpg"
            )
        return self.problem

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            self._refuse("a part without a field name (Content-Disposition: form-data; name=...)")
            return
        name = options[b"name"].decode("utf-8", "replace")
        is_file = b"filename" in options
        self._text_bytes = None if is_file else 0
        if name == self.file_field and is_file:
            self.files += 1
        elif name == self.file_field:
            self._refuse(f"the field '{self.file_field}' must hold uploaded files, not text")
        elif is_file:
            self._refuse(f"a file was sent in the field '{name}'; images go in the field '{self.file_field}'")
        else:
            self.fields += 1
        if max(self.files, self.fields) > MAX_FORM_PARTS:
            self._refuse(f"more than {MAX_FORM_PARTS} files or fields in one form")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text_bytes is not None:
            self._text_bytes += end - start
            if self._text_bytes > MAX_TEXT_BYTES:
                self._refuse(f"a text field of more than {MAX_TEXT_BYTES} bytes")

    def _refuse(self, problem: str) -> None:
        self.problem = self.problem or problem


async def _send_json(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
