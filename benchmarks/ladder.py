"""One step of the user ladder: a headless Locust run in its own process, and its CSV parsed.

Locust (gevent) never shares a process with TensorFlow, so it runs as
``locust -f benchmarks/locustfile.py --headless --users N --spawn-rate N --run-time Ts
--reset-stats --csv PREFIX`` with the images passed through environment variables (see the
locustfile). ``--reset-stats`` drops the ramp-up: the figures cover the time all N users were
running. The ``Aggregated`` row of ``PREFIX_stats.csv`` gives one ``Step``; Locust's
``PREFIX_stats_history.csv`` (per-second figures) stays beside it for a closer look; the most
frequent error of ``PREFIX_failures.csv`` is kept with the step.

The server's side of the step comes from its ``/metrics``, read just before and just after the
Locust run (``benchmarks.server_metrics``): mean queue time per request, mean inference time per
batch, mean batch size and the largest worker's resident memory. Those deltas also cover Locust's
start (~1-2 s, users spawning) that ``--reset-stats`` leaves out of the client-side figures. Peer
servers without convzoo metrics leave them ``None`` (empty cells).

The generator's side: the CPU Locust's own process spent over the measured span (user + system
seconds ÷ wall seconds, from the locustfile; 1.0 = its one core, the most a gevent process can use)
and the machine's 1-minute load average at the end of the step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import server_metrics
from benchmarks.modelrepo import REPO
from benchmarks.percentiles import exact_percentiles
from benchmarks.servers import pin_prefix

LOCUSTFILE = REPO / "benchmarks" / "locustfile.py"
LOCUST_GRACE_S = 60  # start-up and shut-down of Locust beyond the step's run time


@dataclass(frozen=True)
class Step:
    """One server at one number of concurrent users (latencies in ms: exact, from the response
    times ``benchmarks.locustfile`` keeps, else as Locust reports them)."""

    server: str
    users: int
    seconds: float
    requests: int
    failures: int
    requests_per_s: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    top_failure: str = ""  # the most frequent error of the step (Locust's _failures.csv)
    # The server's side, from its /metrics (None: a server without convzoo metrics, or no batch).
    queue_ms: float | None = None  # mean wait of a request for its batch to start
    inference_ms: float | None = None  # mean duration of one model call (one batch)
    batch_size: float | None = None  # mean images per model call
    rss_mib: float | None = None  # the largest worker's resident memory after the step
    # The load generator's side.
    generator_cpu: float | None = None  # Locust's CPU seconds ÷ wall seconds (1.0: its one core)
    load_average: float | None = None  # the machine's 1-minute load average after the step
    windows: str = ""  # a step merged from alternating windows (merge_steps): each window's req/s

    @property
    def ok_per_s(self) -> float:
        """Successful requests per second."""
        return self.requests_per_s * (self.requests - self.failures) / self.requests if self.requests else 0.0


GENERATOR_SATURATED = 0.9
"""Locust's CPU share (of its one core) from which the generator, not the server, sets the pace."""


class LocustError(RuntimeError):
    """Locust did not run or wrote no statistics."""


def locust_command(host: str, users: int, seconds: float, csv_prefix: Path, cpus: str | None) -> list[str]:
    locust = Path(sys.executable).with_name("locust")
    return pin_prefix(cpus) + [
        str(locust),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds:g}s",
        "--reset-stats",
        "--only-summary",
        "--csv",
        str(csv_prefix),
        "--exit-code-on-error",
        "0",
    ]


def run_step(
    server: str,
    host: str,
    users: int,
    seconds: float,
    images: list[Path],
    images_per_request: int,
    csv_prefix: Path,
    cpus: str | None,
    *,
    protocol: str = "classify",
    model: str | None = None,
    classes: int | None = None,
    column: bool = False,
) -> Step:
    """Run Locust for one step and return its figures; its console output goes to PREFIX.log.
    ``protocol`` (``benchmarks.wire.PROTOCOLS``), ``model`` (the name in the OIP path) and
    ``classes`` (values per image in an OIP answer) tell the users what to send and expect."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    times = Path(f"{csv_prefix}_times.json")
    times.unlink(missing_ok=True)
    env = {
        **os.environ,
        "CONVZOO_BENCH_IMAGES": os.pathsep.join(str(p) for p in images),
        "CONVZOO_BENCH_IMAGES_PER_REQUEST": str(images_per_request),
        "CONVZOO_BENCH_TIMES": str(times),
        "CONVZOO_BENCH_PROTOCOL": protocol,
        "CONVZOO_BENCH_MODEL": model or "",
        "CONVZOO_BENCH_CLASSES": "" if classes is None else str(classes),
        "CONVZOO_BENCH_COLUMN": "1" if column else "",
    }
    log_path = csv_prefix.with_suffix(".log")
    before = server_metrics.read(host)
    with log_path.open("wb") as log:
        finished = subprocess.run(
            locust_command(host, users, seconds, csv_prefix, cpus),
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=seconds + LOCUST_GRACE_S,
        )
    if finished.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
        raise LocustError(f"locust exited with code {finished.returncode}:\n{tail}")
    after = server_metrics.read(host)
    step = parse_stats(Path(f"{csv_prefix}_stats.csv"), server, users, images_per_request)
    step = replace(
        step,
        top_failure=top_failure(Path(f"{csv_prefix}_failures.csv")),
        load_average=os.getloadavg()[0],
        **exact_times(times),
    )
    return with_server_figures(step, server_metrics.between(before, after))


def with_server_figures(step: Step, figures: server_metrics.ServerFigures | None) -> Step:
    """``step`` with the server's figures (NaN, a step without a batch, becomes None too)."""
    if figures is None:
        return step

    def known(value: float) -> float | None:
        return None if math.isnan(value) else value

    return replace(
        step,
        queue_ms=known(figures.queue_ms),
        inference_ms=known(figures.inference_ms),
        batch_size=known(figures.batch_size),
        rss_mib=known(figures.rss_mib),
    )


def parse_stats(stats_csv: Path, server: str, users: int, images_per_request: int) -> Step:
    """The ``Aggregated`` row of a Locust ``_stats.csv`` as a ``Step``."""
    if not stats_csv.is_file():
        raise LocustError(f"Locust wrote no {stats_csv}")
    with stats_csv.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise LocustError(f"{stats_csv} has no Aggregated row")
    row = rows[0]
    requests = int(row["Request Count"])
    failures = int(row["Failure Count"])
    requests_per_s = float(row["Requests/s"])
    succeeded_per_s = requests_per_s * (requests - failures) / requests if requests else 0.0
    return Step(
        server=server,
        users=users,
        seconds=requests / requests_per_s if requests_per_s else 0.0,
        requests=requests,
        failures=failures,
        requests_per_s=requests_per_s,
        images_per_s=succeeded_per_s * images_per_request,
        p50_ms=_number(row["50%"]),
        p95_ms=_number(row["95%"]),
        p99_ms=_number(row["99%"]),
        mean_ms=_number(row["Average Response Time"]),
    )


def merge_steps(parts: list[tuple[Step, Path]]) -> Step:
    """One step from several windows of one server at one level (``--compare`` alternates convzoo's
    two protocols on one server, A B B A, a window each): requests, failures and seconds summed,
    the rates their sums ÷ the seconds, the percentiles exact over every window's response times
    (the ``CONVZOO_BENCH_TIMES`` file of each, ``parts``' paths), the server's per-request figures
    weighted by requests, Locust's CPU by seconds, the load average the last window's; ``windows``
    lists each window's successful requests/s."""
    steps = [step for step, _ in parts]
    seconds = sum(s.seconds for s in steps)
    requests = sum(s.requests for s in steps)
    times: list[float] = []
    for _, path in parts:
        with contextlib.suppress(OSError, ValueError):  # a window without the file: Locust's figures
            times += json.loads(path.read_text()).get("times_ms", [])
    exact = exact_percentiles(times) if times else {}

    def weighted(key: str, weight: str) -> float | None:
        known = [(getattr(s, key), getattr(s, weight)) for s in steps if getattr(s, key) is not None]
        total = sum(w for _, w in known)
        return sum(v * w for v, w in known) / total if known and total else None

    return replace(
        steps[-1],
        seconds=seconds,
        requests=requests,
        failures=sum(s.failures for s in steps),
        requests_per_s=requests / seconds if seconds else 0.0,
        images_per_s=sum(s.images_per_s * s.seconds for s in steps) / seconds if seconds else 0.0,
        p50_ms=exact.get("p50_ms", weighted("p50_ms", "requests")),
        p95_ms=exact.get("p95_ms", weighted("p95_ms", "requests")),
        p99_ms=exact.get("p99_ms", max(s.p99_ms for s in steps)),
        mean_ms=exact.get("mean_ms", weighted("mean_ms", "requests")),
        top_failure=next((s.top_failure for s in steps if s.top_failure), ""),
        queue_ms=weighted("queue_ms", "requests"),
        inference_ms=weighted("inference_ms", "requests"),
        batch_size=weighted("batch_size", "requests"),
        rss_mib=max((s.rss_mib for s in steps if s.rss_mib is not None), default=None),
        generator_cpu=weighted("generator_cpu", "seconds"),
        windows=" / ".join(f"{s.ok_per_s:.1f}" for s in steps),
    )


def exact_times(path: Path) -> dict[str, float]:
    """The step's exact latency percentiles (``benchmarks.locustfile`` writes them), to replace
    Locust's rounded ones, and Locust's CPU share; nothing when the file is missing, no latency
    when it holds no request."""
    try:
        times = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("p50_ms", "p95_ms", "p99_ms", "mean_ms") if times.get("count") else ()
    found = {key: float(times[key]) for key in keys if key in times}
    if "generator_cpu" in times:
        found["generator_cpu"] = float(times["generator_cpu"])
    return found


def top_failure(failures_csv: Path, limit: int = 160) -> str:
    """The most frequent error in a Locust ``_failures.csv`` ("" when there were none)."""
    if not failures_csv.is_file():
        return ""
    with failures_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return ""
    worst = max(rows, key=lambda row: int(row["Occurrences"]))
    return f"{worst['Occurrences']}x {worst['Error']}"[:limit]


def _number(text: str) -> float:
    """Locust writes "N/A" when a step had no requests."""
    return float("nan") if text in ("", "N/A") else float(text)
