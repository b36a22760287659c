"""What the service's own request path costs, layer by layer, in process (no socket, no model).

    python -m benchmarks.http_path                    # 3 rounds of 2,000 requests per variant
    python -m benchmarks.http_path --requests 4000 --rounds 5 --decode
    python -m benchmarks.http_path --route v2          # the binary data extension of /v2 instead

Builds the very ASGI app that ``bentoml serve`` runs (``service.http.app.ConvzooService.to_asgi``, its
startup included), with the model replaced by a function that answers at once and, unless
``--decode``, the decoding by a stub (the upload's header is still read: that is the request
path's own check), then posts it real multipart uploads of the ``photos`` set (``benchmarks.images``),
16 at a time, from this very process. The CPU time per request is then the app's own: BentoML's
middlewares, convzoo's guards, the multipart split, the header check, the hand-over to the batcher,
the metrics and the JSON answer. Each variant leaves one layer out (or puts one back) in the same
app; the difference to ``full`` is that layer's cost. uvicorn's part (the socket, HTTP parsing) is
not in these figures: benchmarks/README.md, "The HTTP path", measures it on its own;
``python -m benchmarks.http_served`` measures the served path whole, uvicorn included, per thread.

Variants are interleaved round by round and the median of each is printed (the machine's speed
drifts within minutes). Run it pinned to one CPU (``taskset -c 1``) for figures comparable with
the load benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.http_client import v2_body
from benchmarks.images import image_set
from benchmarks.multipart import encode_multipart

CONCURRENCY = 16
WARMUP_REQUESTS = 100


def variants() -> dict[str, Callable[[list[Any]], list[Any]]]:
    """Name -> the app's middleware list for it (from the full list)."""

    def without(name: str) -> Callable[[list[Any]], list[Any]]:
        return lambda middleware: [m for m in middleware if _name(m) != name]

    return {
        "full": lambda middleware: middleware,
        "- BentoML metrics (RouteLabels)": without("RouteLabels"),
        "- BentoML access log": without("EscapedAccessLog"),  # service.http.app wraps BentoML's
        "- request timeout (InlineTimeout)": without("InlineTimeout"),  # BentoML's, in the request's task
        "- BentoML max concurrency": without("MaxConcurrencyMiddleware"),
    }


def _name(middleware: Any) -> str:
    return getattr(middleware.cls, "__name__", str(middleware.cls))


def stub_model(classes: int) -> None:
    """The runtime answers at once: ``service.runtimes.load`` returns constant probabilities."""
    from service import runtimes
    from service.serving import registry

    def load(choice: Any, folder: Any, threads: int | None = None) -> runtimes.LoadedModel:
        return runtimes.LoadedModel(lambda images: np.full((len(images), classes), 1 / classes, np.float32))

    registry.runtimes.load = load


def stub_decoding() -> None:
    """Decoding answers a blank image at once (the header is still read by ``open_upload``)."""
    from service.serving import dataplane

    def prepare(
        data: bytes, filename: str, resize: Any, limits: Any = None, opened: Any = None
    ) -> np.ndarray:
        return np.zeros((resize.height, resize.width, 3), np.uint8)

    dataplane.prepare_image = prepare


def share_bentoml_metrics() -> None:
    """Every rebuild of the middleware stack makes a new BentoML metrics middleware, which would
    register its metrics again (a duplicate, refused): the later ones take the first one's."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    original = RunnerTrafficMetricsMiddleware._setup
    first: dict[str, Any] = {}

    def setup(self: Any, *args: Any, **kwargs: Any) -> None:
        if not first:
            original(self, *args, **kwargs)
            first.update({k: v for k, v in vars(self).items() if k.startswith("metrics_")})
        else:
            vars(self).update(first)
        self._is_setup = True

    RunnerTrafficMetricsMiddleware._setup = setup


async def post(app: Any, body: bytes, content_type: str, path: str = "/classify") -> None:
    """One ``POST /classify`` (or one binary ``POST /v2/models/<model>/infer``, ``content_type``
    then its JSON header's length) through ``app``, as uvicorn hands it over (64 KiB body chunks)."""
    chunks = [body[at : at + 65536] for at in range(0, len(body), 65536)]
    sent = 0

    async def receive() -> dict:
        nonlocal sent
        if sent < len(chunks):
            sent += 1
            return {"type": "http.request", "body": chunks[sent - 1], "more_body": sent < len(chunks)}
        await asyncio.sleep(3600)  # the client stays connected
        return {"type": "http.disconnect"}

    status: list[int] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    headers = [(b"content-type", content_type.encode())]
    if path.startswith("/v2/"):
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", content_type.encode()),
        ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:3000"),
            *headers,
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "state": {},
    }
    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"the app answered {status} to {path}")


async def cpu_ms_per_request(app: Any, bodies: list[tuple[bytes, str]], count: int, path: str) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        async with limit:
            await post(app, *bodies[index % len(bodies)], path)

    started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(count)))
    return 1e3 * (time.process_time() - started) / count


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, read_metadata, resolve

    ref = resolve(DEFAULT_MODEL, DEFAULT_MODELS_DIR)
    stub_model(len(read_metadata(ref)["labels"]))
    path = f"/v2/models/{ref.name}/infer" if args.route == "v2" else "/classify"
    if not args.decode:
        stub_decoding()
    share_bentoml_metrics()
    from service.http import app as service_app
    from service.service import Classifier

    tracing_kept: list[Any] = []
    original = service_app.without_tracing

    def remember_tracing(app: Any) -> None:
        tracing_kept.extend(m for m in app.user_middleware if _name(m) == service_app.TRACING_MIDDLEWARE)
        original(app)

    service_app.without_tracing = remember_tracing
    app = Classifier.to_asgi(is_main=True)
    full = list(app.user_middleware)
    choices = variants()
    if tracing_kept:  # BentoML's tracing middleware, put back where it stood: behind the guards
        at = next(i for i, m in enumerate(full) if _name(m) == "EscapedAccessLog")
        choices["+ BentoML tracing (SDK off)"] = lambda middleware: [
            *middleware[:at],
            *tracing_kept,
            *middleware[at:],
        ]
    if args.route == "v2":
        choices["- InferRoute (the /v2 mount answers)"] = lambda middleware: [
            m for m in middleware if _name(m) != "InferRoute"
        ]
    if args.only:
        choices = {name: make for name, make in choices.items() if name in args.only}
    photos = image_set("photos")
    if args.route == "v2":
        bodies = [(body, str(length)) for body, length in (v2_body(p.read_bytes()) for p in photos.paths)]
    else:
        bodies = [encode_multipart([(path.name, path.read_bytes())]) for path in photos.paths]
    results: dict[str, list[float]] = {name: [] for name in choices}
    async with app.router.lifespan_context(app):
        for round_number in range(args.rounds):
            for name, make in choices.items():
                app.user_middleware[:] = make(full)
                app.middleware_stack = None  # Starlette builds it again on the next call
                await cpu_ms_per_request(app, bodies, WARMUP_REQUESTS, path)
                results[name].append(await cpu_ms_per_request(app, bodies, args.requests, path))
            print(f"round {round_number + 1}/{args.rounds} done", flush=True)
    return results


def table(results: dict[str, list[float]], decode: bool, route: str = "classify") -> str:
    full = statistics.median(results["full"]) if "full" in results else None
    what = "POST /classify" if route == "classify" else "binary POST /v2/models/.../infer"
    lines = [
        f"CPU per one-photo {what} in the app (decoding {'included' if decode else 'stubbed'};"
        " model stubbed), medians of the rounds:",
        "",
        "| variant | ms per request | difference to full |",
        "|---|---:|---:|",
    ]
    for name, values in results.items():
        median = statistics.median(values)
        change = "" if name == "full" or full is None else f"{median - full:+.3f}"
        lines.append(f"| {name} | {median:.3f} | {change} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode", action="store_true", help="decode the photos for real")
    parser.add_argument(
        "--route",
        choices=("classify", "v2"),
        default="classify",
        help="/classify (multipart) or /v2 (the binary data extension, as tritonclient sends)",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="measure this variant only (repeatable; e.g. full)"
    )
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args))
    print(table(results, args.decode, args.route))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
