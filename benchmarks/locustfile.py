"""Locust load test of ``POST /classify`` (docs/design.md, contract 2), for any server that follows it.

    CONVZOO_BENCH_IMAGES=a.jpg:b.jpg locust -f benchmarks/locustfile.py --headless \\
        --users 8 --spawn-rate 8 --run-time 20s --host http://127.0.0.1:3000

``python -m benchmarks.load`` runs it for you (one Locust process per step of the user ladder).
Settings come from environment variables, so no TensorFlow (and nothing of this project) is
imported here but ``benchmarks.multipart`` (standard library only); gevent and TensorFlow must
never share a process:

| variable                           | meaning                                             |
|------------------------------------|-----------------------------------------------------|
| CONVZOO_BENCH_IMAGES               | image files, separated by ``os.pathsep`` (required) |
| CONVZOO_BENCH_IMAGES_PER_REQUEST   | images in one request (default 1)                   |
| CONVZOO_BENCH_TIMES                | a JSON file for the exact latency percentiles       |

The files are read once at start and every request body is built then, so the load generator
spends its CPU on sending, not on encoding. Users send back to back (no wait time: a closed loop,
``users`` = requests in flight); each starts at a different place in the image list and walks
through it in order, so every size of the mix is sent equally often. A request counts as failed
unless the server answers 200 with a JSON list of one result (with a ``label``) per image.

Locust's own percentiles round every response time to 2 significant digits (1 ms steps below
100 ms: 8 % at 12 ms); with ``CONVZOO_BENCH_TIMES`` set, the response times of the successful
requests are kept exactly (from the moment all users have started, when ``--reset-stats`` resets Locust's
own), and their percentiles written to that file when Locust stops.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from pathlib import Path

from locust import FastHttpUser, constant, events, task

from benchmarks.multipart import encode_multipart

IMAGES_VAR = "CONVZOO_BENCH_IMAGES"
PER_REQUEST_VAR = "CONVZOO_BENCH_IMAGES_PER_REQUEST"


def build_requests(paths: list[Path], per_request: int) -> list[tuple[bytes, str, int]]:
    """One prepared request per starting image: (body, content type, number of images)."""
    files = [(path.name, path.read_bytes()) for path in paths]
    prepared = []
    for start in range(len(files)):
        chosen = [files[(start + i) % len(files)] for i in range(per_request)]
        body, content_type = encode_multipart(chosen)
        prepared.append((body, content_type, per_request))
    return prepared


def _load_requests() -> list[tuple[bytes, str, int]]:
    listing = os.environ.get(IMAGES_VAR, "")
    paths = [Path(p) for p in listing.split(os.pathsep) if p]
    if not paths:
        raise SystemExit(f"set {IMAGES_VAR} to image files separated by {os.pathsep!r}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{IMAGES_VAR}: files not found: {missing}")
    return build_requests(paths, int(os.environ.get(PER_REQUEST_VAR, "1")))


REQUESTS = _load_requests()
_user_numbers = itertools.count()
TIMES_VAR = "CONVZOO_BENCH_TIMES"
_times: list[float] = []  # ms, successful requests since the last reset


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, **_: object) -> None:
    if exception is None:
        _times.append(response_time)


@events.spawning_complete.add_listener
def _reset(**_: object) -> None:
    _times.clear()  # the ramp-up excluded, as Locust's --reset-stats does at the same moment


@events.quitting.add_listener
def _write_times(**_: object) -> None:
    path = os.environ.get(TIMES_VAR)
    if path:
        Path(path).write_text(json.dumps(exact_percentiles(_times)))


def exact_percentiles(times: list[float]) -> dict[str, float | int]:
    """p50/p95/p99 and the mean (ms) of ``times``, unrounded (nearest-rank percentiles)."""
    if not times:
        return {"count": 0}
    ranked = sorted(times)

    def rank(q: float) -> float:
        return ranked[min(len(ranked) - 1, max(0, round(q * len(ranked)) - 1))]

    return {
        "count": len(ranked),
        "p50_ms": statistics.median(ranked),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "mean_ms": statistics.fmean(ranked),
    }


class ClassifyUser(FastHttpUser):
    """Posts prepared requests to ``/classify`` back to back, checking every answer."""

    wait_time = constant(0)

    def on_start(self) -> None:
        offset = next(_user_numbers) * 7  # users start at different images
        self._requests = itertools.islice(itertools.cycle(REQUESTS), offset % len(REQUESTS), None)

    @task
    def classify(self) -> None:
        body, content_type, count = next(self._requests)
        with self.client.post(
            "/classify", data=body, headers={"Content-Type": content_type}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                results = response.json()
            except ValueError:
                response.failure("the answer is not JSON")
                return
            if (
                not isinstance(results, list)
                or len(results) != count
                or not all(isinstance(r, dict) and "label" in r for r in results)
            ):
                response.failure(f"expected a list of {count} results with 'label', got {str(results)[:200]}")
