"""convzoo's own Prometheus metrics, on BentoML's ``/metrics`` beside BentoML's request metrics.

Created on first use in the worker (``metrics()``), after ``service.http.app`` has pointed
``PROMETHEUS_MULTIPROC_DIR`` at this server's folder, so every worker writes its own files and
``/metrics`` adds them up. The names, types and labels are the contract the Prometheus rules, the
alerts and the dashboard rely on (``deploy/prometheus/metrics.txt``, checked by
``tests/test_monitoring.py``); docs/operations.md lists them ("Monitoring").

Outcomes of a request or image: ``ok``, ``invalid_image`` (400), ``invalid_input`` (400: a tensor,
JSON or parameter), ``too_large`` (413), ``unknown_model`` (404), ``error`` (5xx).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import psutil

OUTCOMES = ("ok", "invalid_image", "invalid_input", "too_large", "unknown_model", "error")
STATUS_OUTCOME = {400: "invalid_input", 404: "unknown_model", 413: "too_large"}
SECONDS_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1,
    1.5,
    2,
    3,
    5,
    10,
    30,
    60,
)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32)
REFUSAL_REASONS = {
    401: "api_key",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    503: "busy",
}


def outcome_of(status: int) -> str:
    """The outcome label of an answer's HTTP status."""
    if status < 400:
        return "ok"
    if status >= 500:
        return "error"
    return STATUS_OUTCOME.get(status, "invalid_input")


@dataclass(frozen=True)
class Metrics:
    requests: Any
    images: Any
    request_seconds: Any
    decode_seconds: Any
    queue_seconds: Any
    inference_seconds: Any
    batch_size: Any
    request_images: Any
    in_flight: Any
    model_info: Any
    model_loads: Any
    refusals: Any
    resident_memory: Any
    open_fds: Any
    threads: Any
    cpu_seconds: Any


@functools.cache
def metrics() -> Metrics:
    """This process's metrics (created once, late: module docstring)."""
    from prometheus_client import Counter, Gauge, Histogram

    def histogram(name: str, doc: str, labels: tuple[str, ...], buckets=SECONDS_BUCKETS) -> Any:
        return Histogram(name, doc, labels, buckets=buckets)

    return Metrics(
        requests=Counter(
            "convzoo_requests", "Requests that reached an API", ("model", "version", "protocol", "outcome")
        ),
        images=Counter("convzoo_images", "Images in those requests", ("model", "version", "outcome")),
        request_seconds=histogram(
            "convzoo_request_duration_seconds",
            "Handling time of a successful request",
            ("model", "version", "protocol"),
        ),
        decode_seconds=histogram(
            "convzoo_decode_duration_seconds", "Decoding and resizing one image", ("model",)
        ),
        queue_seconds=histogram(
            "convzoo_queue_duration_seconds",
            "Time a request waits in the batcher's queue before its batch starts",
            ("model", "version"),
        ),
        inference_seconds=histogram(
            "convzoo_inference_duration_seconds", "One model call (a batch)", ("model", "version", "runtime")
        ),
        batch_size=histogram(
            "convzoo_batch_size", "Images per model call", ("model", "version"), COUNT_BUCKETS
        ),
        request_images=histogram(
            "convzoo_request_images", "Images per request", ("model", "version"), COUNT_BUCKETS
        ),
        in_flight=Gauge(
            "convzoo_in_flight_requests",
            "Requests being handled",
            ("model", "version"),
            multiprocess_mode="livesum",
        ),
        model_info=Gauge(
            "convzoo_model_info",
            "1 while this model version is served, 0 once retired",
            ("model", "version", "runtime", "precision", "architecture", "default"),
            multiprocess_mode="livemax",
        ),
        model_loads=Counter(
            "convzoo_model_loads",
            "Model versions loaded, refused or unloaded",
            ("model", "version", "outcome"),
        ),
        refusals=Counter(
            "convzoo_http_refusals", "Requests refused by the guards before any model", ("status", "reason")
        ),
        resident_memory=Gauge(
            "convzoo_process_resident_memory_bytes",
            "Resident memory of a worker",
            multiprocess_mode="liveall",
        ),
        open_fds=Gauge(
            "convzoo_process_open_fds", "Open file descriptors of a worker", multiprocess_mode="liveall"
        ),
        threads=Gauge("convzoo_process_threads", "Threads of a worker", multiprocess_mode="liveall"),
        cpu_seconds=Counter("convzoo_process_cpu_seconds", "CPU seconds of the workers (user + system)"),
    )


class ProcessSampler:
    """Writes this worker's memory, descriptors, threads and CPU time into the metrics
    (``sample()``: cheap, called from the repository watcher's loop, about once a second)."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.cpu_seen = 0.0
        self.lock = threading.Lock()

    def sample(self) -> None:
        m = metrics()
        with self.lock, self.process.oneshot():
            m.resident_memory.set(self.process.memory_info().rss)
            m.open_fds.set(self.process.num_fds())
            m.threads.set(self.process.num_threads())
            times = self.process.cpu_times()
            cpu = times.user + times.system
            if cpu > self.cpu_seen:
                m.cpu_seconds.inc(cpu - self.cpu_seen)
                self.cpu_seen = cpu


def count_refusal(status: int, reason: str | None = None) -> None:
    """One request refused by a guard (``service.http.body``)."""
    metrics().refusals.labels(str(status), reason or REFUSAL_REASONS.get(status, "bad_form")).inc()
