"""Exact latency percentiles, as every load benchmark here reports them (nearest rank, unrounded):
``benchmarks.locustfile`` for one step, ``benchmarks.ladder.merge_steps`` for windows merged."""

from __future__ import annotations

import statistics


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
