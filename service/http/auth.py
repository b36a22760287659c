"""The API key: ``ApiKeyGuard`` (on when ``CONVZOO_API_KEY`` is set) answers 401 to every request, on
every path but the health probes and the static browser page (``GET /ui/...``, which then asks for
the key itself), that lacks ``Authorization: Bearer <key>``. The key is compared in constant time
and never echoed: not in the answer, not in a log line.
"""

from __future__ import annotations

import hmac

from service.http.asgi import ASGIApp, Receive, Scope, Send, log_refusal
from service.serving.errors import ServiceError, send_error


class ApiKeyGuard:
    OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready"})
    """Health probes stay open, so a load balancer or orchestrator needs no key."""
    OPEN_PAGE = "/ui"
    """The browser page (static files, ``service.http.ui``) loads without a key (GET and HEAD only):
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
