"""Every request that reaches the app gets an answer, in time (``ConvzooService.to_asgi`` puts
both in place of, or behind, BentoML's timeout middleware):

- ``InlineTimeout``: BentoML's request timeout (``CONVZOO_TIMEOUT_S``), run in the request's own
  task: the same 504, without the task, future and never-cancelled timer BentoML's made per request;
- ``AlwaysAnswer``: a handler that raised before answering gets a JSON 500 at once (and one log
  line with its traceback), not a plain-text 500 after the whole timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.middleware import Middleware

from service.http.asgi import ASGIApp, Message, Receive, Scope, Send, internal_error

TIMEOUT_MIDDLEWARE = "TimeoutMiddleware"


def always_answer(app: Any) -> None:
    """Put ``AlwaysAnswer`` right behind BentoML's timeout middleware of the Starlette ``app`` (or
    innermost, without one)."""
    names = [getattr(m.cls, "__name__", "") for m in app.user_middleware]
    at = names.index(TIMEOUT_MIDDLEWARE) + 1 if TIMEOUT_MIDDLEWARE in names else len(names)
    app.user_middleware.insert(at, Middleware(AlwaysAnswer))


class AlwaysAnswer:
    """Every request that reaches a route gets an answer, at once.

    BentoML's timeout middleware (``bentoml._internal.server.http.traffic.TimeoutMiddleware``) runs
    the app as a task and waits until it sends its first message or the timeout passes; a handler
    that raised before answering ended that task unseen, so the client waited the whole timeout
    (``CONVZOO_TIMEOUT_S``, 60 s) and then got a plain-text 500 (``ASGI callable returned without
    starting response``); behind ``InlineTimeout``, which replaces it, the failure would reach
    Starlette's plain-text 500. Behind either, this middleware answers such a request with a JSON
    500 at once, and logs the failure with its traceback once (a server fault: client errors are
    4xx answered by the handlers themselves)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            if started:
                raise
            await internal_error(scope, send, error)
            return
        if not started:
            await internal_error(scope, send, None)


def timeout_inline(app: Any) -> None:
    """Replace BentoML's timeout middleware of the Starlette ``app`` by ``InlineTimeout`` (the
    same ``timeout``), where it stands."""
    for index, middleware in enumerate(app.user_middleware):
        if getattr(middleware.cls, "__name__", "") == TIMEOUT_MIDDLEWARE:
            app.user_middleware[index] = Middleware(InlineTimeout, **middleware.kwargs)


class InlineTimeout:
    """BentoML's request timeout (``bentoml._internal.server.http.traffic.TimeoutMiddleware``), run
    in the request's own task: a request that has sent nothing ``timeout`` seconds after it got
    here is cancelled and answered BentoML's 504, ``{"error": "Not able to process the request in
    <timeout> seconds"}``; once its answer has started, no time limit. BentoML's runs the app as a
    task of its own per request, with a future to wait on and a timer that is never cancelled
    (each fires ``timeout`` seconds later, for nothing); this one has one timer, cancelled by the
    first message sent (benchmarks/README.md, "Where a request's time goes")."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        cancelling = task.cancelling()
        deadline = _Deadline(task)
        timer = task.get_loop().call_later(self.timeout, deadline.expire)

        async def timed_send(message: Message) -> None:
            if not deadline.answered:
                deadline.answered = True
                timer.cancel()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except asyncio.CancelledError:
            # as asyncio.timeout tells its own cancellation from any other
            if not deadline.expired or task.uncancel() > cancelling:
                raise
        else:
            return
        finally:
            timer.cancel()
        from starlette.responses import JSONResponse

        message = f"Not able to process the request in {self.timeout} seconds"
        await JSONResponse({"error": message}, status_code=504)(scope, receive, send)


class _Deadline:
    """``InlineTimeout``'s state of one request: answered yet, and whether its time ran out."""

    __slots__ = ("answered", "expired", "task")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.answered = False
        self.expired = False

    def expire(self) -> None:
        if not self.answered:
            self.expired = True
            self.task.cancel()
