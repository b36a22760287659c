"""The one error a request can end with, and the one way it is written (docs/design.md, "Data
flow"): ``ServiceError`` (an HTTP status, a one-line message a user understands, details such as
the refused ``files`` or the ``served`` models) is raised by the guards, the data plane and the
protocol adapters alike; ``error_body`` turns it into ``{"error": message, **details}``, and every
JSON error answer of the service (the guards', the adapters', the connection's 431/408, the 500 of
a handler that failed) is written by it.

Load-time problems have their own exceptions, none of which writes JSON or reaches a client as
such: ``service.repository.InvalidExport`` (a folder that breaks the repository contract: the
schema, containment, checksums, the SavedModel's files), ``service.runtimes.RuntimeUnavailable``
(a runtime that cannot serve) and ``service.serving.model_store.ModelNotFound`` (no default model
at start).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from service.serving.metrics import outcome_of


class ServiceError(Exception):
    """A request refused or failed: HTTP ``status``, the reason in words a user understands, and
    details (``files``: the refused images, each ``{"index", "file", "reason"}``; ``served``: what
    is served, for an unknown model). ``headers``: extra answer headers (``www-authenticate``,
    ``connection: close``); ``kind``: the refusal's reason label in the guards' metric (None: the
    status's, ``service.serving.metrics.count_refusal``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        kind: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or []
        self.kind = kind

    @property
    def outcome(self) -> str:
        """The metrics' outcome: ``invalid_image`` for refused files, else by status."""
        return (
            "invalid_image" if self.status == 400 and self.details.get("files") else outcome_of(self.status)
        )


def internal(error: BaseException | None) -> ServiceError:
    """The 500 of a failure that is not the client's (a bug, the runtime failing, no answer)."""
    what = type(error).__name__ if error is not None else "no answer"
    return ServiceError(500, f"the server failed on this request ({what}); see its log")


def error_body(error: ServiceError) -> bytes:
    """``{"error": message, **details}``: compact UTF-8 JSON, the one error body of the service."""
    return json.dumps(
        {"error": error.message, **error.details}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def error_headers(body: bytes, error: ServiceError) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *error.headers,
    ]


async def send_error(send: Callable[[dict], Awaitable[None]], error: ServiceError) -> None:
    """``error`` answered through an ASGI ``send`` (its frames forgotten: ``forget_frames``)."""
    forget_frames(error)
    body = error_body(error)
    await send({"type": "http.response.start", "status": error.status, "headers": error_headers(body, error)})
    await send({"type": "http.response.body", "body": body})


def error_response(error: ServiceError) -> Response:
    """``error`` as a Starlette response (its frames forgotten: ``forget_frames``)."""
    forget_frames(error)
    response = Response(error_body(error), status_code=error.status, media_type="application/json")
    for name, value in error.headers:
        response.headers.append(name.decode("latin-1"), value.decode("latin-1"))
    return response


def answers_errors(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """A Starlette endpoint whose ``ServiceError`` is answered by ``error_response``."""

    @functools.wraps(endpoint)
    async def answering(*args: Any, **kwargs: Any) -> Response:
        try:
            return await endpoint(*args, **kwargs)
        except ServiceError as error:
            failure = error
        return error_response(failure)

    return answering


def forget_frames(error: BaseException) -> None:
    """Drop the tracebacks of ``error`` and the exceptions it chains: their frames hold the request
    (its body, the parsed JSON), and the handler that caught it holds the error, a reference cycle
    that only a full garbage collection frees, which ``gc.freeze`` and the raised thresholds of
    ``service.service`` make rare (a refused 59 MiB JSON body kept 2.6 GB)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        if error.__cause__ is not None:
            forget_frames(error.__cause__)
        error = error.__context__
