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
  (``tensor_paths``: parsing JSON takes up to ~25 times its size, ``service.core.json_memory``),
  ``max_body_bytes`` (a JSON ``{}``) for every other route;
- 408 when the client sends no part of the body for ``body_timeout_s``, or not all of it within
  ``body_deadline_s`` (the request timeout; the connection closes). While it waits for a body, a
  request holds no concurrency slot of BentoML (``service.app`` puts the guards in front);
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
(``service.activity``: the batcher runs a lone request at once, without its thread). Every refusal
is one log line: status, reason, client and route. Redirects are relative
(``Location: /ui/``, never built from the client's Host header).

``ApiKeyGuard`` (on when ``CONVZOO_API_KEY`` is set) answers 401 to every request, on every path
but the health probes and the static browser page (``GET /ui/...``, which then asks for the key
itself), that lacks ``Authorization: Bearer <key>``. The key is compared in constant
time and never echoed: not in the answer, not in a log line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from python_multipart.multipart import TOKEN_CHARS, MultipartParser, parse_options_header

from service.activity import Activity
from service.errors import ServiceError, internal, send_error
from service.metrics import count_refusal

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("bentoml.convzoo")  # under "bentoml" so BentoML's log config shows it
FORM = "convzoo.form"
"""The scope key under which ``RequestGuard`` leaves a parsed upload (``ParsedForm``)."""
RAW_IMAGE_TYPES = (b"image/", b"application/octet-stream")
"""Content types of a raw upload: the body is one image file (query: ``top_k``, ``model``)."""
MAX_FORM_PARTS = 1000
MAX_TEXT_BYTES = 1024 * 1024
"""What Starlette's form parser (which BentoML calls with its defaults) accepts: 1000 files, 1000
text fields, 1 MiB per text value. Beyond, or on a part without a name, it raises and BentoML
answers 500; the guard refuses first, with a 400."""


MAX_NUMBER_DIGITS = 18
"""Digits of the longest number a client may write in a header or a form field (``ascii_int``)."""


def ascii_int(text: str | bytes, max_digits: int = MAX_NUMBER_DIGITS) -> int | None:
    """The non-negative integer ``text`` writes in 1 to ``max_digits`` ASCII digits (surrounding
    spaces allowed), else None. ``str.isdigit`` is not this test: it holds for ``'²'`` (which
    ``int()`` refuses), ``'٢'`` and ``'２'`` (which ``int()`` reads as 2), and for 5,000 digits
    (which ``int()`` refuses past 4,300). The one rule for a number in a header or a form field
    (versions have theirs: ``service.repository.parse_version``)."""
    if isinstance(text, str):
        if not text.isascii():
            return None
        text = text.encode("ascii")
    text = text.strip()
    if not 1 <= len(text) <= max_digits or not text.isdigit():  # bytes.isdigit: ASCII digits only
        return None
    return int(text)


class ApiKeyGuard:
    OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready"})
    """Health probes stay open, so a load balancer or orchestrator needs no key."""
    OPEN_PAGE = "/ui"
    """The browser page (static files, ``service.ui``) loads without a key (GET and HEAD only):
    a browser cannot send the header before the page has asked for the key."""
    OPEN_DOCS = ("/", "/static_content")
    """The API page (``static/api.html``) and BentoML's Swagger UI files load without a key too
    (GET and HEAD; static files, nothing about the model): the page then asks ``/docs.json`` with
    the key the browser page keeps (``static/api.js``)."""

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
            refusal = ServiceError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                "(the key the server was started with, CONVZOO_API_KEY)",
                headers=[(b"www-authenticate", b"Bearer")],
            )
            log_refusal(scope, refusal)
            await send_error(send, refusal)

    def _is_page(self, scope: Scope) -> bool:
        path = scope["path"]
        root, docs_files = self.OPEN_DOCS
        return (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and (
                path in (self.OPEN_PAGE, root)
                or path.startswith(self.OPEN_PAGE + "/")
                or path.startswith(docs_files + "/")
            )
        )

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        scheme, _, token = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


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
        content_types: list[bytes] = []
        length = b""
        binary_data = False  # the Open Inference Protocol's binary data extension: JSON, then bytes
        for key, value in scope["headers"]:
            key = key.lower()
            if key == b"content-type":
                content_types.append(value)
            elif key == b"content-length":
                length = length or value
            elif key == b"inference-header-content-length":
                binary_data = True
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_deadline_s
        try:
            async with asyncio.timeout(None) as timeout:  # one timer, moved on with every chunk
                while more:
                    timeout.reschedule(min(loop.time() + self.body_timeout_s, deadline))
                    message = await receive()
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
        except TimeoutError:
            if loop.time() >= deadline:
                reason = f"the request body took longer than {self.body_deadline_s:g} s (CONVZOO_TIMEOUT_S)"
            else:
                idle = self.body_timeout_s
                reason = f"no part of the request body arrived for {idle:g} s (CONVZOO_BODY_TIMEOUT_S)"
            raise ServiceError(408, reason, headers=[(b"connection", b"close")]) from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if form is not None:
            problem = form.feed_body(body)
            if problem:
                raise ServiceError(400, problem)
            scope[FORM] = form.form()
            self.buffered += len(body)  # the parsed copy of the files is held too, until the answer
            held[0] += len(body)
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


def relative_redirects(send: Send) -> Send:
    """``send`` that turns an absolute ``Location`` (Starlette builds ``http://<Host>/ui/`` from the
    client's Host header when it adds a slash) into the path alone."""

    async def send_relative(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, _path_of(v) if k.lower() == b"location" else v) for k, v in message.get("headers", [])
            ]
            message = {**message, "headers": headers}
        await send(message)

    return send_relative


def _path_of(location: bytes) -> bytes:
    parts = urlsplit(location.decode("latin-1"))
    path = parts.path or "/"
    if not path.startswith("/") or path.startswith("//"):
        path = "/" + path.lstrip("/")
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


def log_refusal(scope: Scope, refusal: ServiceError) -> None:
    count_refusal(refusal.status, refusal.kind)
    client = scope.get("client") or ("?", 0)
    logger.warning(
        "refused %s %s from %s:%s: %s %s",
        scope["method"],
        printable(scope["path"]),
        client[0],
        client[1],
        refusal.status,
        printable(refusal.message, 500),
    )


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, every character that is not printable escaped (``\\n``,
    ``\\x1b``, ``\\u2028``): one log line, whatever the client sent (a path may hold a
    percent-encoded newline). The one rule for client text in a log line: convzoo's refusal lines
    and BentoML's access log (``service.app.EscapedAccessLog``) use it."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)


class FormInspector:
    """Streams a multipart body through a parser that looks only at each part's headers."""

    def __init__(self, boundary: bytes, file_field: str) -> None:
        self.file_field = file_field
        self.boundary = boundary
        self.files = 0
        self.parts: list[
            tuple[str, str | None, list[tuple[bytes, int, int]]]
        ] = []  # (field, filename, spans)
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

    def feed_body(self, body: bytes) -> str | None:
        """Parse the whole body; the first problem found, if any. A body of the plain shape every
        client sends (``split_plain_form``) is split with a few searches; any other goes through
        python-multipart's streaming parser; the same checks apply to the parts either way."""
        parts = split_plain_form(body, self.boundary)
        if parts is None:
            return self.feed(body, last=True)
        for headers, start, end in parts:
            self._part_begin()
            for name, value in headers:
                self._field, self._value = name, value
                self._header_end()
            self._headers_finished()
            if end > start:
                self._part_data(body, start, end)
        return self._finish()

    def feed(self, chunk: bytes, last: bool) -> str | None:
        """Parse one chunk; the first problem found, once known (at the latest with the last)."""
        try:
            self._parser.write(chunk)
            if last:
                self._parser.finalize()
        except Exception as error:
            self.problem = self.problem or f"malformed multipart body ({error})"
        return self._finish() if last else self.problem

    def _finish(self) -> str | None:
        if not self.problem and self.files == 0:
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
        name = _user_safe_decode(options[b"name"])
        is_file = b"filename" in options
        self._text_bytes = None if is_file else 0
        self.parts.append((name, _user_safe_decode(options[b"filename"]) if is_file else None, []))
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
        if self.parts and self.problem is None:
            self.parts[-1][2].append((data, start, end))
        if self._text_bytes is not None:
            self._text_bytes += end - start
            if self._text_bytes > MAX_TEXT_BYTES:
                self._refuse(f"a text field of more than {MAX_TEXT_BYTES} bytes")

    def _refuse(self, problem: str) -> None:
        self.problem = self.problem or problem

    def form(self) -> ParsedForm:
        """What the body held: the files of ``file_field`` and every text value, by field (a part
        that came in one piece is one copy of it)."""
        files = [
            (filename or "", _join(spans)) for name, filename, spans in self.parts if filename is not None
        ]
        fields: dict[str, list[str]] = {}
        for name, filename, spans in self.parts:
            if filename is None:
                fields.setdefault(name, []).append(_join(spans).decode("utf-8", "replace"))
        return ParsedForm(files, fields)


def _join(spans: list[tuple[bytes, int, int]]) -> bytes:
    if len(spans) == 1:
        data, start, end = spans[0]
        return data[start:end]
    return b"".join(memoryview(data)[start:end] for data, start, end in spans)


MAX_PLAIN_HEADERS = 8
"""Header lines per part that ``split_plain_form`` takes (python-multipart's own limit)."""
MAX_PLAIN_HEADER_LINE = 4096
"""Longest header line ``split_plain_form`` takes (python-multipart allows 4096 + 128)."""


def split_plain_form(body: bytes, boundary: bytes) -> list[tuple[list[tuple[bytes, bytes]], int, int]] | None:
    """The parts of a multipart body of the plain shape that browsers, curl and HTTP libraries send,
    as (header (name, value) pairs, start, end of the data in ``body``); None for any other shape,
    which the caller hands to python-multipart instead.

    Plain: the body starts with the first delimiter, every delimiter is followed by CRLF (another
    part) or ``--`` (the last, then nothing or one CRLF), header lines are ``name: value`` with a
    token name and no lone CR or LF (at most ``MAX_PLAIN_HEADERS`` of ``MAX_PLAIN_HEADER_LINE``
    bytes), and there are at most twice ``MAX_FORM_PARTS`` parts. Within that shape the parts are
    exactly what python-multipart finds (tests/test_fuzz.py compares the two); values keep what
    python-multipart keeps (leading spaces dropped, nothing else)."""
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    delimiter = b"\r\n--" + boundary
    parts: list[tuple[list[tuple[bytes, bytes]], int, int]] = []
    at = len(opening)
    while len(parts) <= 2 * MAX_FORM_PARTS:
        if body.startswith(b"\r\n", at):
            headers, start = [], at + 2
        else:
            head_end = body.find(b"\r\n\r\n", at)
            if head_end < 0:
                return None
            headers = _plain_headers(body[at:head_end])
            if headers is None:
                return None
            start = head_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            return None
        parts.append((headers, start, end))
        after = end + len(delimiter)
        if body.startswith(b"\r\n", after):
            at = after + 2
        elif body.startswith(b"--", after):
            tail = len(body) - after - 2  # what follows the last delimiter: nothing, or one CRLF
            return parts if tail == 0 or (tail == 2 and body.endswith(b"\r\n")) else None
        else:
            return None
    return None


def _plain_headers(block: bytes) -> list[tuple[bytes, bytes]] | None:
    lines = block.split(b"\r\n")
    if len(lines) > MAX_PLAIN_HEADERS:
        return None
    headers = []
    for line in lines:
        colon = line.find(b":")
        if colon <= 0 or len(line) > MAX_PLAIN_HEADER_LINE or b"\r" in line or b"\n" in line:
            return None
        name = line[:colon]
        if name.translate(None, TOKEN_CHARS):
            return None
        headers.append((name, line[colon + 1 :].lstrip(b" ")))
    return headers


@dataclass(frozen=True)
class ParsedForm:
    """An upload the guard has read and parsed (``scope[FORM]``): the route need not parse it again.
    ``files``: (filename, bytes) in order; ``fields``: text values by name."""

    files: list[tuple[str, bytes]]
    fields: dict[str, list[str]]


def _user_safe_decode(value: bytes) -> str:
    """A field name as Starlette decodes it (UTF-8, else Latin-1; the guard refuses other charsets)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


async def internal_error(scope: Scope, send: Send, error: Exception | None) -> None:
    """A JSON 500 for a request whose handler failed (``error``) or returned without answering
    (None), logged once with the traceback; the error's traceback is cleared after (its frames
    hold the request)."""
    route = f"{scope.get('method', '')} {printable(scope.get('path', ''))}"
    if error is None:
        logger.error("%s returned without an answer", route)
    else:
        logger.error("%s failed: %r", route, error, exc_info=error)
        error.__traceback__ = None
    await send_error(send, internal(error))
