"""How convzoo's BentoML service becomes the ASGI app a worker serves (``ConvzooService``).

``@bentoml.service(service_class=ConvzooService)`` in ``service.service``. In each worker process,
just before BentoML builds the app and uvicorn starts, ``ConvzooService.to_asgi``:

- sets what the libraries read from the environment, from ``service.config.settings()``:
  ``OTEL_SDK_DISABLED=true`` when BentoML exports no traces (its spans would go nowhere, and cost
  throughput: benchmarks/README.md, "What we tried") unless the user set it either way;
  ``FORWARDED_ALLOW_IPS`` (uvicorn's ``forwarded_allow_ips``) to ``CONVZOO_FORWARDED_ALLOW_IPS``,
  so ``X-Forwarded-For`` / ``-Proto`` are believed from those proxies only (by default from none:
  uvicorn alone would believe any peer on 127.0.0.1); and ``PROMETHEUS_MULTIPROC_DIR`` to this
  server's own folder (``metrics_folder``): BentoML gives every server on a host the same folder
  under ``$BENTOML_HOME`` and empties it when one starts, so two servers would serve each other's
  metrics;
- labels BentoML's HTTP metrics with the route (``/classify``, ``/ui``, ...) or ``other``, never
  the raw path (``RouteLabels``): a label value per path requested, 401s included, would grow the
  memory of every worker with each new URL, for good;
- removes BentoML's OpenTelemetry middleware when no span goes anywhere (``tracing``);
- runs BentoML's request timeout in the request's own task (``InlineTimeout``: the same 504,
  without a task, a future and a timer left running per request);
- moves convzoo's guards (``service.http.body``: the API key, then the body's size, time and
  form) right behind the metrics, in front of BentoML's own middlewares: a request waiting for
  its body does not hold one of the ``CONVZOO_MAX_CONCURRENCY`` slots nor count against the
  request timeout, and a refused request is logged once, by the guard (not again by the access
  log), and never reaches a BentoML handler.

``openapi_spec`` gives ``/docs.json`` convzoo's title, version and description (``service.http.openapi``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import attrs
import bentoml
import psutil
from bentoml._internal.service.openapi.specification import Info, OpenAPISpecification
from starlette.middleware import Middleware
from starlette.routing import Match

from service.config import ServiceConfig, settings
from service.http import connection, openapi
from service.http.answering import always_answer, timeout_inline
from service.http.asgi import ASGIApp, Receive, Scope, Send, printable
from service.http.auth import ApiKeyGuard
from service.http.body import RequestGuard
from service.http.traffic import BoundTrafficMetrics

OTHER = "other"
"""The metrics label of every path that no route serves."""
REAL_PATH = "convzoo.path"
METRICS_MIDDLEWARES = ("HTTPTrafficMetricsMiddleware", "RunnerTrafficMetricsMiddleware")
"""BentoML's HTTP metrics middlewares (``bentoml._internal.server.http.instruments``), which
label ``endpoint`` with ``scope["path"]``."""


class ConvzooService(bentoml.Service):
    """A ``bentoml.Service`` with convzoo's OpenAPI ``info`` and app (module docstring)."""

    @property
    def openapi_spec(self) -> OpenAPISpecification:
        return self.openapi_spec_for()

    def openapi_spec_for(self, url: str = openapi.DEFAULT_URL) -> OpenAPISpecification:
        """The spec, its curl examples addressed to ``url`` (``scheme://host:port``)."""
        spec = super().openapi_spec
        return attrs.evolve(
            spec,
            info=Info(
                title=openapi.TITLE,
                version=openapi.convzoo_version(self.bento),
                description=openapi.describe(self, url, auth=settings().api_key is not None),
            ),
        )

    def add_route(self, route: Any) -> None:
        """A Starlette route matched before BentoML's mounts: an exact path such as ``GET /v2``,
        which the mount at ``/v2`` alone answers with a redirect to ``/v2/``."""
        self.__dict__.setdefault("_exact_routes", []).append(route)

    def to_asgi(self, is_main: bool = True) -> Any:
        config = settings()
        set_library_environment(config)
        connection.install(config)  # before uvicorn loads its config: the request head's bounds
        app = super().to_asgi(is_main)
        for route in reversed(self.__dict__.get("_exact_routes", [])):
            app.router.routes.insert(0, route)
        label_metrics_by_route(app)
        escape_access_log(app)
        guards_first(app)
        always_answer(app)
        timeout_inline(app)
        if not tracing(config):
            without_tracing(app)
        return app


def tracing(config: ServiceConfig) -> bool:
    """Whether spans go anywhere: BentoML exports them (``tracing.exporter_type`` in its
    configuration) and the user did not set ``OTEL_SDK_DISABLED=true``, or the user enabled the
    SDK explicitly (``OTEL_SDK_DISABLED=false``, e.g. for an exporter set through OTEL_*)."""
    if config.otel_sdk_disabled is not None:
        return config.otel_sdk_disabled.strip().lower() != "true"
    return bool(_trace_exporter())


def set_library_environment(config: ServiceConfig) -> None:
    """What OpenTelemetry, uvicorn and prometheus_client read from the environment (module docstring)."""
    if config.otel_sdk_disabled is None and not tracing(config):
        os.environ["OTEL_SDK_DISABLED"] = "true"
    os.environ["FORWARDED_ALLOW_IPS"] = config.forwarded_allow_ips
    if folder := metrics_folder(config):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _trace_exporter() -> str | None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    try:
        return BentoMLContainer.tracing.exporter_type.get()
    except Exception:  # no BentoML configuration loaded: nothing exports
        return None


def metrics_folder(config: ServiceConfig) -> Path | None:
    """This server's Prometheus multiprocess folder: ``CONVZOO_METRICS_DIR``, else a sibling of
    BentoML's shared one named after the server's main process (its pid and start time, so a
    restarted server never reads a dead one's files); folders of servers no longer running are
    removed. None outside ``bentoml serve`` (no multiprocess metrics)."""
    if config.metrics_dir:
        folder = Path(config.metrics_dir)
    elif config.bentoml_metrics_dir:
        shared = Path(config.bentoml_metrics_dir)
        server = psutil.Process(os.getppid())
        _remove_dead_servers_folders(shared)
        folder = shared.with_name(f"{shared.name}.convzoo-{server.pid}-{int(server.create_time())}")
    else:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _remove_dead_servers_folders(shared: Path) -> None:
    for folder in shared.parent.glob(f"{shared.name}.convzoo-*"):
        pid = folder.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            for file in folder.glob("*.db"):
                file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # something else lives there, or it is gone already
                folder.rmdir()


def label_metrics_by_route(app: Any) -> None:
    """Wrap BentoML's HTTP metrics middleware of the Starlette ``app`` (before its first request)
    in ``RouteLabels``."""
    for index, middleware in enumerate(app.user_middleware):
        if getattr(middleware.cls, "__name__", "") in METRICS_MIDDLEWARES:
            app.user_middleware[index] = Middleware(
                RouteLabels, metrics=middleware.cls, router=app.router, **middleware.kwargs
            )


GUARDS = (ApiKeyGuard, RequestGuard)


def guards_first(app: Any) -> None:
    """Move the ``GUARDS`` (added with ``add_asgi_middleware``, which puts them behind BentoML's
    middlewares) right behind the metrics middleware of the Starlette ``app``, in their order."""
    guards = [m for m in app.user_middleware if m.cls in GUARDS]
    others = [m for m in app.user_middleware if m.cls not in GUARDS]
    at = next((i + 1 for i, m in enumerate(others) if m.cls is RouteLabels), 0)
    app.user_middleware[:] = [*others[:at], *guards, *others[at:]]


TRACING_MIDDLEWARE = "OpenTelemetryMiddleware"


def without_tracing(app: Any) -> None:
    """Remove BentoML's OpenTelemetry middleware from the Starlette ``app``: with no exporter its
    spans go nowhere, yet it costs ~0.3 ms of CPU a request (a third of the app's own share of an
    upload; benchmarks/README.md, "The HTTP path")."""
    app.user_middleware[:] = [
        m for m in app.user_middleware if getattr(m.cls, "__name__", "") != TRACING_MIDDLEWARE
    ]


MAX_SEEN_PATHS = 1024
MAX_SEEN_PATH_LENGTH = 256
"""``RouteLabels`` remembers the label of at most this many paths of at most this length (any
client may ask for any path: the memory stays bounded, and a flood of new paths only costs the
walk of the routes each, as it did before)."""


class RouteLabels:
    """Runs BentoML's metrics middleware on a scope whose ``path`` is the route's own path
    (``/classify``; a mount's prefix, ``/ui``) or ``other``; the app behind it sees the real path.
    An HTTP request's samples are recorded by ``service.http.traffic.BoundTrafficMetrics`` (the
    same samples, cheaper) when the middleware is BentoML's ``RunnerTrafficMetricsMiddleware``."""

    def __init__(self, app: ASGIApp, *, metrics: type, router: Any, **options: Any) -> None:
        self.metrics = metrics(_real_path(app), **options)
        self.app = app
        self.router = router
        self.exact: dict[str, str] = {}  # paths that are a route's own path (bounded by the routes)
        self.seen: dict[str, str] = {}  # other paths' labels, at most MAX_SEEN_PATHS short ones
        self.bound: BoundTrafficMetrics | None | bool = False  # made at the first HTTP request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.metrics(scope, receive, send)
            return
        label = self.label(scope)
        if self.bound is False:
            self.bound = BoundTrafficMetrics.of(self.metrics, self.app)
        if self.bound is not None and label != "/metrics":  # the same samples, children bound once
            await self.bound(label, scope, receive, send)
            return
        # BentoML's middleware reads the path once, on entry; ``_real_path`` puts it back behind it
        scope[REAL_PATH] = scope["path"]
        scope["path"] = label
        await self.metrics(scope, receive, send)

    def label(self, scope: Scope) -> str:
        """The route's label of ``scope``'s path (it depends on the path alone: a route whose
        method differs still gives its label); remembered for the routes' own paths, and for up
        to ``MAX_SEEN_PATHS`` others (``/v2/models/<name>/infer``: a walk of every route, a
        regex match each, per request otherwise), forgotten all at once when full."""
        path = scope["path"]
        if path in self.exact:
            return self.exact[path]
        if (label := self.seen.get(path)) is not None:
            return label
        label = OTHER
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                label = route.path or "/"
                if label == path:
                    self.exact[path] = label
                    return label
                break
        if len(path) <= MAX_SEEN_PATH_LENGTH:
            if len(self.seen) >= MAX_SEEN_PATHS:
                self.seen.clear()
            self.seen[path] = label
        return label


def _real_path(app: ASGIApp) -> ASGIApp:
    async def with_real_path(scope: Scope, receive: Receive, send: Send) -> None:
        if REAL_PATH in scope:
            scope["path"] = scope.pop(REAL_PATH)
        await app(scope, receive, send)

    return with_real_path


ACCESS_LOG_MIDDLEWARE = "AccessLogMiddleware"
MAX_LOGGED_PATH = 1000
"""Characters of a path that an access log line shows (then ``...``)."""
MAX_LOGGED_HEADER = 200
"""Characters of a logged header value that it shows (``printable``'s default)."""


def escape_access_log(app: Any) -> None:
    """Wrap BentoML's access log middleware of the Starlette ``app`` in ``EscapedAccessLog``."""
    for index, middleware in enumerate(app.user_middleware):
        if getattr(middleware.cls, "__name__", "") == ACCESS_LOG_MIDDLEWARE:
            app.user_middleware[index] = Middleware(EscapedAccessLog, log=middleware.cls, **middleware.kwargs)


class EscapedAccessLog:
    """Runs BentoML's access log middleware (``bentoml._internal.server.http.access``), which
    writes the path and the request's Content-Type and Content-Length as the client sent them, on
    a scope whose path and those two headers are ``printable`` (the rule of convzoo's refusal
    lines): ``GET /v2/models/x%0aFAKE2%20LINE`` no longer starts a log line ``FAKE2 LINE``, and a
    Content-Type that is not UTF-8 no longer fails the answer. The app behind it sees the request
    as it came."""

    LOGGED_HEADERS = (b"content-type", b"content-length")

    def __init__(self, app: ASGIApp, *, log: type, **options: Any) -> None:
        self.log = log(_real_scope(app), **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.log(scope, receive, send)
            return
        if self._shown_as_is(scope):  # nearly every request: the log shows the scope itself
            await self.log(scope, receive, send)
            return
        shown = {
            **scope,
            "path": printable(scope["path"], MAX_LOGGED_PATH),
            "headers": [
                (key, _printable_bytes(value) if key in self.LOGGED_HEADERS else value)
                for key, value in scope["headers"]
            ],
            REAL_SCOPE: scope,
        }
        await self.log(shown, receive, send)

    def _shown_as_is(self, scope: Scope) -> bool:
        """Whether ``printable`` leaves the path and the logged headers as they are."""
        path = scope["path"]
        if len(path) > MAX_LOGGED_PATH or not path.isprintable():
            return False
        return all(
            len(value) <= MAX_LOGGED_HEADER and value.isascii() and value.decode("ascii").isprintable()
            for key, value in scope["headers"]
            if key in self.LOGGED_HEADERS
        )


REAL_SCOPE = "convzoo.scope"


def _printable_bytes(value: bytes) -> bytes:
    return printable(value.decode("latin-1")).encode()


def _real_scope(app: ASGIApp) -> ASGIApp:
    async def with_real_scope(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope.get(REAL_SCOPE, scope), receive, send)

    return with_real_scope
