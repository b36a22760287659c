"""Bounds on a request's head (request line and headers), in the HTTP connection itself.

A request's head is parsed by uvicorn's HTTP protocol before any ASGI middleware runs, so neither
the API key (``service.http.body.ApiKeyGuard``) nor the body guards can bound it. uvicorn keeps no
limit of its own with httptools (the implementation ``bentoml serve`` gets; httptools joins the
pieces of a header value with ``+=``, so the CPU a never-finished header costs grows with the
square of its size), and no time limit with either implementation. ``bentoml serve`` builds its
``uvicorn.Config`` itself (``_bentoml_impl.worker.service``) with ``http="auto"``; ``install``
points uvicorn's protocol table (``uvicorn.config.HTTP_PROTOCOLS``: ``auto``, ``httptools``,
``h11``) at the subclasses below, in each worker before uvicorn loads its config
(``service.http.app.ConvzooService.to_asgi``). Each connection then:

- refuses a head larger than ``max_header_bytes`` (``CONVZOO_MAX_HEADER_BYTES``) with 431 and
  closes: the bytes received while a head is incomplete are counted, so the connection holds at
  most that much plus one read (256 KiB) of it, and its cost grows with its size only; so is the
  trailer of a chunked body (header lines after its last chunk, which httptools joins as it
  joins the head's); h11 has the same bound from its own setting,
  ``h11_max_incomplete_event_size``, which it answers 400;
- refuses a head that has not arrived ``header_timeout_s`` (``CONVZOO_HEADER_TIMEOUT_S``) after
  the connection opened, or after the first byte of a later request on it, with 408 and closes
  (a connection that sent nothing is closed without an answer). Between requests, uvicorn's own
  keep-alive timeout applies.

Each refusal is one log line and counted in ``convzoo_refusals_total`` (``header_too_large``,
``header_timeout``), as the body guards' refusals are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import ServiceConfig
from service.http.asgi import printable
from service.serving.errors import ServiceError, error_body
from service.serving.metrics import count_refusal

logger = logging.getLogger("bentoml.convzoo")
PROTOCOLS = {
    "h11": "service.http.connection:GuardedH11Protocol",
    "httptools": "service.http.connection:GuardedHttpToolsProtocol",
}


def install(config: ServiceConfig) -> None:
    """Make uvicorn's HTTP protocols in this process the guarded ones (``auto``: httptools when it
    is installed, as uvicorn chooses, else h11)."""
    import uvicorn.config

    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - uvicorn's own choice without httptools
        auto = PROTOCOLS["h11"]
    else:
        auto = PROTOCOLS["httptools"]
    HeadGuard.max_header_bytes = config.max_header_bytes
    HeadGuard.header_timeout_s = config.header_timeout_s
    uvicorn.config.HTTP_PROTOCOLS.update({**PROTOCOLS, "auto": auto})


class HeadGuard:
    """What both protocols share: the head's byte count and its timer (module docstring)."""

    max_header_bytes = ServiceConfig.max_header_bytes
    header_timeout_s: float = ServiceConfig.header_timeout_s
    """The bounds (``install`` sets them from the settings)."""
    transport: asyncio.Transport
    client: tuple[str, int] | None
    loop: asyncio.AbstractEventLoop

    def _guard_init(self) -> None:
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None

    def _head_started(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_complete(self) -> None:
        self.head_bytes = 0
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _count_head(self, data: bytes) -> None:
        self.head_bytes += len(data)
        self._head_started()

    def _head_too_large(self) -> bool:
        if self.head_bytes <= self.max_header_bytes or self.transport.is_closing():
            return False
        self._refuse(
            431,
            "header_too_large",
            f"the request line and headers exceed {self.max_header_bytes} bytes (CONVZOO_MAX_HEADER_BYTES)",
        )
        return True

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.head_bytes == 0:  # nothing sent: nothing to answer
            self.transport.close()
            return
        self._refuse(
            408,
            "header_timeout",
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s "
            "(CONVZOO_HEADER_TIMEOUT_S)",
        )

    def _refuse(self, status: int, kind: str, reason: str) -> None:
        count_refusal(status, kind)
        client = self.client or ("?", 0)
        logger.warning(
            "refused a request head from %s:%s: %s %s", client[0], client[1], status, printable(reason)
        )
        payload = error_body(ServiceError(status, reason))
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, phrase, len(payload), payload)
        )
        self.transport.close()
        self._head_complete()

    # The connection's first head starts with it; a lost connection stops its timer. (Both
    # protocols put the guard first in their bases, so ``super()`` is uvicorn's protocol.)
    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_started()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_complete()
        super().connection_lost(exc)  # type: ignore[misc]


def _httptools_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HeadGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol with the head's bounds (module docstring)."""

        def __init__(self, config: Any, server_state: Any, app_state: dict, _loop: Any = None) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._guard_init()
            self.in_head = True  # the next bytes belong to a request's head
            self.in_trailer = False  # after a chunk's size line, until its data: maybe the trailer
            self.heads = 0  # heads completed on this connection

        def data_received(self, data: bytes) -> None:
            # A head that starts in these bytes starts its timer, unless it also ends in them (a
            # keep-alive request's head nearly always does: no timer made and cancelled for it).
            in_head, heads = self.in_head, self.heads
            if in_head or self.in_trailer:
                self.head_bytes += len(data)
            super().data_received(data)
            if in_head and self.heads == heads:
                self._head_started()
            if self.in_head or self.in_trailer:
                self._head_too_large()

        def on_chunk_header(self) -> None:
            # the size line of a chunk; after the last one (size 0) come the trailer's header lines,
            # which httptools joins as it joins the head's: counted the same way, until data comes
            self.in_trailer = True
            self.head_bytes = 0

        def on_body(self, body: bytes) -> None:
            self.in_trailer = False
            super().on_body(body)

        def on_chunk_complete(self) -> None:
            self.in_trailer = False

        def on_headers_complete(self) -> None:
            self.in_head = False
            self.heads += 1
            self._head_complete()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.in_head = True

    return GuardedHttpToolsProtocol


try:
    GuardedHttpToolsProtocol = _httptools_protocol()
except ImportError:  # pragma: no cover - no httptools: uvicorn uses h11
    GuardedHttpToolsProtocol = None  # type: ignore[assignment,misc]


class GuardedH11Protocol(HeadGuard, H11Protocol):
    """uvicorn's h11 protocol with the head's bounds: its size through h11's own setting
    (``h11_max_incomplete_event_size``), its time as with httptools (module docstring)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict, _loop: Any = None) -> None:
        config.h11_max_incomplete_event_size = self.max_header_bytes
        super().__init__(config, server_state, app_state, _loop)
        self._guard_init()

    def data_received(self, data: bytes) -> None:
        in_head = self.conn.their_state is h11.IDLE
        if in_head:
            self._count_head(data)
        super().data_received(data)
        if in_head and self.conn.their_state is not h11.IDLE:
            self._head_complete()
        elif in_head:
            self._head_too_large()
