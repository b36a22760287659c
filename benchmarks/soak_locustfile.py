"""Paced Locust users for the soak run (``python -m benchmarks.reliability soak``).

The users of ``benchmarks/locustfile.py`` (same prepared requests, same answer checks), each
sending at most ``CONVZOO_SOAK_USER_RPS`` requests per second (``constant_throughput``), so that
``users x rate`` is the offered load. Every request is recorded and, when Locust quits, written
to ``CONVZOO_SOAK_LOG`` as CSV (``start_s,latency_ms,ok``), from which the runner computes the
latency per minute. Run with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import os

from locust import constant_throughput, events

import benchmarks.locustfile as base

RATE_VAR = "CONVZOO_SOAK_USER_RPS"
LOG_VAR = "CONVZOO_SOAK_LOG"
RECORDS: list[tuple[float, float, int]] = []


class PacedClassifyUser(base.ClassifyUser):
    wait_time = constant_throughput(float(os.environ[RATE_VAR]))


@events.request.add_listener
def record(start_time: float, response_time: float, exception, **_) -> None:
    RECORDS.append((start_time, response_time, int(exception is None)))


@events.quitting.add_listener
def write_records(**_) -> None:
    with open(os.environ[LOG_VAR], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "latency_ms", "ok"])
        writer.writerows(RECORDS)
