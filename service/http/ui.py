"""The browser page at ``/ui``: drop images, see each one's top-5 classes (README, "Try it in the
browser").

Three static files (``service/static/``: ``index.html``, ``ui.js``, ``ui.css``; no framework, no
build step) served by the service itself, mounted with BentoML's ``mount_asgi_app``. The page
calls the public API from the browser (``POST metadata``, ``POST classify``, relative to
``/ui/``), so it sees exactly what a client sees; with ``CONVZOO_API_KEY`` set it asks for the key
and sends it as ``Authorization: Bearer <key>`` (``ApiKeyGuard`` leaves the page itself open).

Every answer carries a Content-Security-Policy that allows nothing but this server: the page works
offline, and a stray external reference would fail loudly in the browser tests
(``tests/test_ui.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.staticfiles import StaticFiles

from service.http.asgi import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
MOUNT_PATH = "/ui"

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),  # revalidate (ETag): a new version shows at the next load
]


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every answer of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def ui_app() -> ASGIApp:
    """The page's ASGI app: ``static/`` (``index.html`` at ``/``), with the security headers."""
    return SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True))


def mount_ui(service: Any) -> None:
    """Serve the page at ``/ui/`` from ``service`` (a ``bentoml.Service``), and convzoo's landing
    page at ``/``."""
    service.mount_asgi_app(ui_app(), path=MOUNT_PATH, name="ui")
    service.add_asgi_middleware(LandingPage)


LANDING_PAGE = STATIC_DIR / "api.html"


class LandingPage:
    """``GET /``: convzoo's API page (``static/api.html``: BentoML's own Swagger UI assets, the
    OpenAPI description of ``service.http.openapi``, a link to the page) instead of BentoML's, which
    is titled "BentoML Prediction Service" and loads Google's tag manager from the internet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body = LANDING_PAGE.read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})
