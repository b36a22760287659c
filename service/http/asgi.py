"""The ASGI vocabulary of the HTTP edge, and what its parts share: a number a client writes in a
header or a field (``ascii_int``), client text in a log line (``printable``), the refusal's log
line (``log_refusal``), the 500 of a handler that failed (``internal_error``) and relative
redirects (``relative_redirects``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from service.serving.errors import ServiceError, internal, send_error
from service.serving.metrics import count_refusal

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("bentoml.convzoo")  # under "bentoml" so BentoML's log config shows it

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


def relative_redirects(send: Send) -> Send:
    """``send`` that turns an absolute ``Location`` (Starlette builds ``http://<Host>/ui/`` from the
    client's Host header when it adds a slash) into the path alone."""

    async def send_relative(message: Message) -> None:
        if message["type"] == "http.response.start" and any(
            k.lower() == b"location" for k, _ in message.get("headers", ())
        ):
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
    and BentoML's access log (``service.http.app.EscapedAccessLog``) use it."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    if cut.isprintable():  # nearly every path and header: nothing to escape
        return cut
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)


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
