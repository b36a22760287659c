"""Locust load test of ``POST /classify`` or the Open Inference Protocol's ``/v2 .../infer``, for
any server that speaks one of them (``benchmarks.wire``: the request bodies and the answer checks).

    CONVZOO_BENCH_IMAGES=a.jpg:b.jpg locust -f benchmarks/locustfile.py --headless \\
        --users 8 --spawn-rate 8 --run-time 20s --host http://127.0.0.1:3000
    CONVZOO_BENCH_PROTOCOL=oip-binary CONVZOO_BENCH_MODEL=imagenette CONVZOO_BENCH_CLASSES=10 ...

``python -m benchmarks.load`` runs it for you (one Locust process per step of the user ladder).
Settings come from environment variables, so no TensorFlow (and nothing of this project) is
imported here but ``benchmarks.wire`` (standard library only); gevent and TensorFlow must never
share a process:

| variable                           | meaning                                                     |
|------------------------------------|-------------------------------------------------------------|
| CONVZOO_BENCH_IMAGES               | image files, separated by ``os.pathsep`` (required)         |
| CONVZOO_BENCH_IMAGES_PER_REQUEST   | images in one request (default 1)                           |
| CONVZOO_BENCH_PROTOCOL             | ``classify`` (default), ``oip-binary`` or ``oip-json``      |
| CONVZOO_BENCH_MODEL                | the model's name in ``/v2/models/<name>/infer`` (OIP)       |
| CONVZOO_BENCH_CLASSES              | values expected in ``probabilities`` per image (OIP)        |
| CONVZOO_BENCH_COLUMN               | ``1``: ``image_bytes`` of shape ``[n, 1]`` (Triton)         |
| CONVZOO_BENCH_TIMES                | a JSON file for the exact percentiles and Locust's own CPU  |

The files are read once at start and every request body is built then, so the load generator
spends its CPU on sending, not on encoding. Users send back to back (no wait time: a closed loop,
``users`` = requests in flight); each starts at a different place in the image list and walks
through it in order, so every size of the mix is sent equally often. A request counts as failed
unless the server answers 200 with what the protocol promises (``benchmarks.wire.check``: a
result with a ``label`` per image, or ``probabilities`` of the right size).

Locust's own percentiles round every response time to 2 significant digits (1 ms steps below
100 ms: 8 % at 12 ms); with ``CONVZOO_BENCH_TIMES`` set, the response times of the successful
requests are kept exactly (from the moment all users have started, when ``--reset-stats`` resets Locust's
own), and their percentiles written to that file when Locust stops, with the CPU this process
spent over the same span (user + system seconds of ``psutil.Process().cpu_times()`` ÷ wall
seconds: 1.0 is one core, all a gevent process can use, so a share near 1 means the generator,
not the server, set the pace).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import psutil
from locust import FastHttpUser, constant, events, task

from benchmarks import wire
from benchmarks.percentiles import exact_percentiles

IMAGES_VAR = "CONVZOO_BENCH_IMAGES"
PER_REQUEST_VAR = "CONVZOO_BENCH_IMAGES_PER_REQUEST"
PROTOCOL_VAR = "CONVZOO_BENCH_PROTOCOL"
MODEL_VAR = "CONVZOO_BENCH_MODEL"
CLASSES_VAR = "CONVZOO_BENCH_CLASSES"


def build_requests(
    paths: list[Path],
    per_request: int,
    protocol: str = "classify",
    model: str | None = None,
    column: bool = False,
) -> list[wire.Prepared]:
    """One prepared request per starting image (``benchmarks.wire.build_all``)."""
    files = [(path.name, path.read_bytes()) for path in paths]
    return wire.build_all(protocol, files, per_request, model, column)


def _load_requests() -> list[wire.Prepared]:
    listing = os.environ.get(IMAGES_VAR, "")
    paths = [Path(p) for p in listing.split(os.pathsep) if p]
    if not paths:
        raise SystemExit(f"set {IMAGES_VAR} to image files separated by {os.pathsep!r}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{IMAGES_VAR}: files not found: {missing}")
    try:
        return build_requests(
            paths,
            int(os.environ.get(PER_REQUEST_VAR, "1")),
            os.environ.get(PROTOCOL_VAR) or "classify",
            os.environ.get(MODEL_VAR),
            os.environ.get("CONVZOO_BENCH_COLUMN") == "1",
        )
    except ValueError as error:
        raise SystemExit(f"{PROTOCOL_VAR}/{MODEL_VAR}: {error}") from None


REQUESTS = _load_requests()
PROTOCOL = os.environ.get(PROTOCOL_VAR) or "classify"
CLASSES = int(os.environ[CLASSES_VAR]) if os.environ.get(CLASSES_VAR) else None
_user_numbers = itertools.count()
TIMES_VAR = "CONVZOO_BENCH_TIMES"
_times: list[float] = []  # ms, successful requests since the last reset
_process = psutil.Process()
_cpu_start: list[float] = []  # [cpu seconds, wall clock] when all users had started
_cpu_end: list[float] = []  # the same when the run stopped


def _cpu_seconds() -> float:
    times = _process.cpu_times()
    return times.user + times.system


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, **_: object) -> None:
    if exception is None:
        _times.append(response_time)


@events.spawning_complete.add_listener
def _reset(**_: object) -> None:
    _times.clear()  # the ramp-up excluded, as Locust's --reset-stats does at the same moment
    _cpu_start[:] = [_cpu_seconds(), time.monotonic()]


@events.test_stop.add_listener
def _stopped(**_: object) -> None:
    if not _cpu_end:
        _cpu_end[:] = [_cpu_seconds(), time.monotonic()]


@events.quitting.add_listener
def _write_times(**_: object) -> None:
    path = os.environ.get(TIMES_VAR)
    if path:
        figures = exact_percentiles(_times)
        figures["times_ms"] = _times  # windows of one level merge exactly (ladder.merge_steps)
        end = _cpu_end or [_cpu_seconds(), time.monotonic()]
        if _cpu_start and end[1] > _cpu_start[1]:
            figures["generator_cpu_s"] = end[0] - _cpu_start[0]
            figures["generator_wall_s"] = end[1] - _cpu_start[1]
            figures["generator_cpu"] = figures["generator_cpu_s"] / figures["generator_wall_s"]
        Path(path).write_text(json.dumps(figures))


class ClassifyUser(FastHttpUser):
    """Posts prepared requests back to back (``/classify`` or ``/v2 .../infer``), checking every
    answer."""

    wait_time = constant(0)

    def on_start(self) -> None:
        offset = next(_user_numbers) * 7  # users start at different images
        self._requests = itertools.islice(itertools.cycle(REQUESTS), offset % len(REQUESTS), None)

    @task
    def send(self) -> None:
        prepared = next(self._requests)
        with self.client.post(
            prepared.path, data=prepared.body, headers=prepared.headers, catch_response=True
        ) as response:
            problem = wire.check(
                PROTOCOL,
                response.status_code,
                response.content or b"",
                response.headers,
                prepared.images,
                CLASSES,
            )
            if problem is not None:
                response.failure(problem)
