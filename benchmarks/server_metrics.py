"""The server's side of a load step, from its ``/metrics`` (deploy/prometheus/metrics.txt).

``read(url)`` takes a snapshot of the counters and gauges (``None`` when the server has no
convzoo metrics: the FastAPI and Ray Serve peers); ``between(before, after)`` turns two snapshots
into the step's server-side figures, from the ``_sum``/``_count`` deltas of the histograms:

- mean queue time per request (``convzoo_queue_duration_seconds``),
- mean inference time per batch, one model call (``convzoo_inference_duration_seconds``),
- mean batch size (``convzoo_batch_size``),
- the worker's resident memory after the step (``convzoo_process_resident_memory_bytes``, the
  largest of the workers' ``pid`` series).

Summed over every label set (models, versions, workers). Standard library and
``prometheus_client``'s text parser only: no TensorFlow.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

QUEUE = "convzoo_queue_duration_seconds"
INFERENCE = "convzoo_inference_duration_seconds"
BATCH_SIZE = "convzoo_batch_size"
MEMORY = "convzoo_process_resident_memory_bytes"
MiB = 2**20


@dataclass(frozen=True)
class Snapshot:
    """Samples of one ``/metrics`` text: {(sample name, sorted label pairs): value}."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str) -> float:
        """Sum of every series of sample ``name`` (0 when there is none)."""
        return sum(value for (sample, _), value in self.samples.items() if sample == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """{value of ``label``: sample} for sample ``name`` (e.g. memory by pid)."""
        return {
            dict(labels)[label]: value
            for (sample, labels), value in self.samples.items()
            if sample == name and label in dict(labels)
        }

    def has_convzoo(self) -> bool:
        return any(sample.startswith("convzoo_") for sample, _ in self.samples)


@dataclass(frozen=True)
class ServerFigures:
    """One step seen from the server (NaN where the step had no such event)."""

    queue_ms: float  # mean wait of a request for its batch to start
    inference_ms: float  # mean duration of one model call (one batch)
    batch_size: float  # mean images per model call
    batches: int  # model calls during the step
    rss_mib: float  # the largest worker's resident memory after the step


def parse(text: str) -> Snapshot:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Snapshot(samples)


def read(url: str, timeout: float = 10, headers: dict[str, str] | None = None) -> Snapshot | None:
    """``url``/metrics parsed, or ``None`` when it has no convzoo metrics (a peer server, an error)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            snapshot = parse(answer.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return snapshot if snapshot.has_convzoo() else None


def _mean(before: Snapshot, after: Snapshot, name: str) -> float:
    count = after.total(f"{name}_count") - before.total(f"{name}_count")
    total = after.total(f"{name}_sum") - before.total(f"{name}_sum")
    return total / count if count > 0 else math.nan


def memory_mib(snapshot: Snapshot) -> float:
    """The largest worker's resident memory, MiB (NaN without the gauge)."""
    by_pid = snapshot.by_label(MEMORY, "pid")
    return max(by_pid.values()) / MiB if by_pid else math.nan


def between(before: Snapshot | None, after: Snapshot | None) -> ServerFigures | None:
    """The step's server-side figures from the snapshots before and after it (``None`` if either is)."""
    if before is None or after is None:
        return None
    return ServerFigures(
        queue_ms=1000 * _mean(before, after, QUEUE),
        inference_ms=1000 * _mean(before, after, INFERENCE),
        batch_size=_mean(before, after, BATCH_SIZE),
        batches=round(after.total(f"{INFERENCE}_count") - before.total(f"{INFERENCE}_count")),
        rss_mib=memory_mib(after),
    )
