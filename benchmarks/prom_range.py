"""Read a curve back from a running Prometheus and save it as CSV and a plot.

    python -m benchmarks.prom_range --prometheus http://127.0.0.1:9090 --minutes 35 \
        --query 'convzoo_process_resident_memory_bytes' --scale 1048576 --unit MiB \
        --csv soak-memory.csv --plot soak-memory.png

What the soak (``python -m benchmarks.reliability soak``) did to the worker's memory, as
Prometheus scraped it from ``/metrics`` (deploy/prometheus/README.md starts one on the service):
one series per label set of the query (a worker: ``pid``), sampled every ``--step`` seconds over
the last ``--minutes``. The summary gives each series' first, peak and last value and its growth
from the end of the first minute to the end.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import requests


def query_range(prometheus: str, query: str, minutes: float, step: float) -> list[dict]:
    end = time.time()
    response = requests.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": query, "start": end - 60 * minutes, "end": end, "step": step},
        timeout=60,
    )
    response.raise_for_status()
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {query!r}: {body}")
    return body["data"]["result"]


def series_name(metric: dict) -> str:
    labels = {k: v for k, v in metric.items() if k not in ("__name__", "job", "instance")}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or metric.get("__name__", "value")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--query", default="convzoo_process_resident_memory_bytes")
    parser.add_argument("--minutes", type=float, default=35)
    parser.add_argument("--step", type=float, default=15, help="seconds between points")
    parser.add_argument("--scale", type=float, default=1024 * 1024, help="divide values by this")
    parser.add_argument("--unit", default="MiB")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    result = query_range(args.prometheus, args.query, args.minutes, args.step)
    if not result:
        print(f"no data for {args.query!r} in the last {args.minutes:g} minutes")
        return 1
    curves = {
        series_name(r["metric"]): [(float(t), float(v) / args.scale) for t, v in r["values"]] for r in result
    }
    start = min(points[0][0] for points in curves.values())
    if args.csv:
        with args.csv.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["series", "minute", args.unit])
            for name, points in curves.items():
                writer.writerows((name, round((t - start) / 60, 3), round(v, 2)) for t, v in points)
    for name, points in curves.items():
        after_minute = next((v for t, v in points if t - start >= 60), points[0][1])
        peak, last = max(v for _, v in points), points[-1][1]
        growth = 100 * (last - after_minute) / after_minute if after_minute else float("nan")
        print(
            f"{name}: first {points[0][1]:.0f} {args.unit}, after 1 min {after_minute:.0f}, peak {peak:.0f}, "
            f"last {last:.0f} ({growth:+.1f} % from minute 1), {len(points)} points over "
            f"{(points[-1][0] - points[0][0]) / 60:.1f} min"
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(8, 3.5))
        for name, points in curves.items():
            axis.plot([(t - start) / 60 for t, _ in points], [v for _, v in points], label=name)
        axis.set_xlabel("minutes")
        axis.set_ylabel(args.unit)
        axis.set_ylim(bottom=0)
        axis.set_title(f"{args.query} (read from Prometheus)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
