"""BentoML's HTTP request metrics, with their label children bound once (``BoundTrafficMetrics``).

BentoML's ``RunnerTrafficMetricsMiddleware`` (``bentoml._internal.server.http.instruments``) looks
up four metric children by keyword labels on every request (``labels(endpoint=..., ...)``: the
label names sorted and checked, a tuple built, a lock taken, each time), and wraps ``receive`` for
websocket messages an HTTP request never gets. ``BoundTrafficMetrics`` records the very same
samples for an HTTP request, on the middleware's own metrics, with each child looked up once per
route label and status; ``service.http.app.RouteLabels`` uses it for HTTP requests (websockets,
and any other metrics middleware, keep BentoML's own).
"""

from __future__ import annotations

from timeit import default_timer
from typing import Any

from service.http.asgi import ASGIApp, Message, Receive, Scope, Send

BOUND_MIDDLEWARE = "RunnerTrafficMetricsMiddleware"
"""The BentoML middleware whose samples ``BoundTrafficMetrics`` records (BentoML 1.4)."""


class BoundTrafficMetrics:
    """``await bound(label, scope, receive, send)``: ``app`` answers the request while BentoML's
    HTTP metrics record it under ``label``, as BentoML's middleware ``metrics`` would."""

    def __init__(self, metrics: Any, app: ASGIApp) -> None:
        from bentoml._internal.context import server_context

        if not metrics._is_setup:
            metrics._setup()
        self.metrics = metrics
        self.app = app
        self.skip_paths = tuple(metrics.skip_paths)
        self.names = {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        self.timestamp = metrics.metrics_last_request_timestamp.labels(**self.names)
        self.in_progress: dict[str, Any] = {}  # label -> its gauge child (labels: the routes')
        self.done: dict[tuple[str, int], tuple[Any, Any]] = {}  # (label, status) -> (total, duration)

    @classmethod
    def of(cls, metrics: Any, app: ASGIApp) -> BoundTrafficMetrics | None:
        """For BentoML's HTTP metrics middleware ``metrics`` (None for any other)."""
        return cls(metrics, app) if type(metrics).__name__ == BOUND_MIDDLEWARE else None

    def _finished(self, label: str, status: int) -> tuple[Any, Any]:
        children = self.done.get((label, status))
        if children is None:
            names = {"endpoint": label, "http_response_code": status, **self.names}
            children = self.done[label, status] = (
                self.metrics.metrics_request_total.labels(**names),
                self.metrics.metrics_request_duration.labels(**names),
            )
        return children

    async def __call__(self, label: str, scope: Scope, receive: Receive, send: Send) -> None:
        if not label.startswith(self.skip_paths):
            self.timestamp.set_to_current_time()
        started = default_timer()
        status = 0

        async def measured_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body", False):
                total, duration = self._finished(label, status)
                total.inc()
                duration.observe(max(default_timer() - started, 0))
            await send(message)

        in_progress = self.in_progress.get(label)
        if in_progress is None:
            names = {"endpoint": label, **self.names}
            in_progress = self.in_progress[label] = self.metrics.metrics_request_in_progress.labels(**names)
        with in_progress.track_inprogress():
            await self.app(scope, receive, measured_send)
