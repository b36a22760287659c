"""Reliability runs against the BentoML service: soak, overload, a killed worker. Scripts, not tests.

    python -m benchmarks.reliability soak --minutes 10        # Locust at 80 % of saturation
    python -m benchmarks.reliability overload --factor 4      # open-loop burst at 4x saturation
    python -m benchmarks.reliability kill-worker              # kill -9 the model worker under load
    options: --model NAME[:V] --models-dir DIR --saturation-rps R (skip the probe) --out DIR

Each run starts the service (``benchmarks.servers.RunningServer``, pinned to ``--server-cpus``,
the load generator to ``--client-cpus``), checks ``/metadata``, warms it up, and measures its
saturation throughput with a closed-loop Locust step (``benchmarks.ladder.run_step``,
``--probe-users`` users for ``--probe-seconds``) unless ``--saturation-rps`` is given. Then:

- ``soak``: paced Locust users (``benchmarks/soak_locustfile.py``) offer ``--load`` (0.8) x
  saturation for ``--minutes``; every request is recorded; every 5 s the RSS of all service
  processes is sampled (psutil) and the service's own ``/metrics`` read: each worker's
  ``convzoo_process_resident_memory_bytes`` (by ``pid``), what Prometheus would see. Targets: no
  failed request, p99 of the last minute within 25 % of the first, RSS growing < 10 % from the
  end of minute 1 to the end. ``soak_memory.csv`` and ``soak.png`` (worker memory, MiB, over
  minutes beside p50/p99 per minute) show the curve.
- ``overload``: open-loop arrivals (asyncio + aiohttp, a fixed rate whatever the answers) at
  0.5x saturation (baseline), ``--factor`` x saturation for ``--seconds``, then 0.5x again. Targets:
  only 200/429/503 (JSON bodies), none slower than the server timeout, every 200 a full answer,
  and after the drop a 1-second window with every request answered within 1.5x the baseline
  median within ``RECOVERY_TARGET_S``.
- ``kill-worker``: open-loop 0.5x saturation; after 10 s ``kill -9`` of one of the service's
  ``--workers`` processes (each holds the HTTP API and a copy of the model). Reported: failed
  requests, the failure window, the time until latency is back to the baseline.

The service runs with ``CONVZOO_MAX_CONCURRENCY=--max-concurrency`` (about saturation x the
queueing delay one accepts), ``CONVZOO_TIMEOUT_S=--timeout`` and ``CONVZOO_WORKERS=--workers``.
Output: ``report.md``, the per-request CSVs (and for the soak its memory CSVs and plot) in
``benchmarks/results/reliability-<mode>-<time>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import psutil

from benchmarks import server_metrics
from benchmarks.images import add_image_set_argument, image_set
from benchmarks.ladder import run_step
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, resolve
from benchmarks.multipart import encode_multipart
from benchmarks.servers import SERVERS, RunningServer, check_metadata, pin_prefix, warm_up
from service.config import cpu_count

RESULTS_DIR = REPO / "benchmarks" / "results"
SOAK_LOCUSTFILE = REPO / "benchmarks" / "soak_locustfile.py"
RSS_EVERY_S = 5  # psutil and /metrics samples of the soak
WORKER_COMMAND = "_bentoml_impl.worker.service"  # in the command line of a service worker
RECOVERY_TARGET_S = 5.0
BASELINE_LOAD = 0.5


@dataclass(frozen=True)
class Record:
    """One request: when it was sent (s from the run start), its status or error, its latency."""

    sent_s: float
    status: str  # "200", "429", ... or the client error's name ("TimeoutError")
    latency_s: float
    phase: str


# ------------------------------------------------------------------------------ the load drivers


async def open_loop(
    url: str,
    bodies: list[tuple[bytes, str]],
    phases: list[tuple[str, float, float]],
    timeout_s: float,
    at_second=None,
) -> list[Record]:
    """Send at fixed rates whatever the answers: ``phases`` = [(name, requests/s, seconds)].

    ``at_second`` = (t, callback) calls ``callback()`` once, t seconds into the run.
    """
    records: list[Record] = []
    connector = aiohttp.TCPConnector(limit=2000)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = time.monotonic()
        tasks, index, phase_start = [], 0, 0.0
        for name, rate, seconds in phases:
            count = int(rate * seconds)
            for i in range(count):
                due = phase_start + i / rate
                if at_second and due >= at_second[0]:
                    at_second[1]()
                    at_second = None
                await asyncio.sleep(max(0.0, start + due - time.monotonic()))
                body, content_type = bodies[index % len(bodies)]
                index += 1
                tasks.append(
                    asyncio.create_task(_one(session, url, body, content_type, start, name, records))
                )
            phase_start += seconds
        await asyncio.gather(*tasks)
    return sorted(records, key=lambda r: r.sent_s)


async def _one(session, url, body, content_type, start, phase, records) -> None:
    sent = time.monotonic()
    try:
        async with session.post(
            f"{url}/classify", data=body, headers={"Content-Type": content_type}
        ) as response:
            payload = await response.read()
            status = str(response.status)
            if response.status == 200:
                answers = json.loads(payload)
                if not (isinstance(answers, list) and len(answers) == 1 and "label" in answers[0]):
                    status = "200-bad-body"
            elif "error" not in json.loads(payload or b"{}"):
                status += "-no-json-error"
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        status = type(error).__name__
    records.append(Record(sent - start, status, time.monotonic() - sent, phase))


def service_rss_mib(server: RunningServer) -> float:
    """Resident memory of the server process and all its workers, in MiB."""
    try:
        root = psutil.Process(server.process.pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


# ------------------------------------------------------------------------------------ the modes


def soak(args, server: RunningServer, images: list[Path], saturation: float, out: Path) -> list[str]:
    users = args.soak_users
    rate = args.load * saturation
    log = out / "soak_requests.csv"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CONVZOO_BENCH_IMAGES": os.pathsep.join(str(p) for p in images),
        "CONVZOO_SOAK_USER_RPS": f"{rate / users:.4f}",
        "CONVZOO_SOAK_LOG": str(log),
    }
    locust = Path(sys.executable).with_name("locust")
    argv = pin_prefix(args.client_cpus) + [
        str(locust),
        "-f",
        str(SOAK_LOCUSTFILE),
        "--headless",
        "--host",
        server.url,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{args.minutes * 60:g}s",
        "--only-summary",
        "--exit-code-on-error",
        "0",
    ]
    print(
        f"[soak] {rate:.1f} requests/s ({args.load:.0%} of {saturation:.1f}) from {users} paced "
        f"users for {args.minutes:g} min",
        flush=True,
    )
    rss: list[tuple[float, float]] = []
    workers: list[tuple[float, str, float]] = []  # (s, pid, MiB) from /metrics
    start = time.monotonic()
    with (out / "soak_locust.log").open("wb") as locust_log:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=locust_log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            now = time.monotonic() - start
            rss.append((now, service_rss_mib(server)))
            workers += worker_memory(server.url, now)
            time.sleep(RSS_EVERY_S if len(rss) > 1 else 1)
    if process.returncode != 0 or not log.is_file():
        raise RuntimeError(f"locust failed (code {process.returncode}); see {out}/soak_locust.log")
    _write_rss(out / "soak_rss.csv", rss)
    _write_worker_memory(out / "soak_memory.csv", workers)
    lines = soak_report(log, rss, rate, args.minutes)
    lines[-3:-3] = [memory_line(workers), ""]
    title = f"soak: {rate:.1f} requests/s for {args.minutes:g} min"
    plot_soak(out / "soak.png", log, workers, title, args.minutes)
    return lines + ["", "![worker memory and latency per minute](soak.png)"]


def worker_memory(url: str, seconds: float) -> list[tuple[float, str, float]]:
    """Each worker's resident memory from the service's /metrics: [(seconds, pid, MiB)]."""
    snapshot = server_metrics.read(url)
    if snapshot is None:
        return []
    by_pid = snapshot.by_label(server_metrics.MEMORY, "pid")
    return [(seconds, pid, value / server_metrics.MiB) for pid, value in sorted(by_pid.items())]


def memory_line(workers: list[tuple[float, str, float]]) -> str:
    if not workers:
        return "Worker memory from /metrics: none read (convzoo_process_resident_memory_bytes missing)"
    parts = []
    for pid in dict.fromkeys(p for _, p, _ in workers):
        mine = [(t, v) for t, p, v in workers if p == pid]
        parts.append(
            f"pid {pid}: {mine[0][1]:.0f} MiB at {mine[0][0] / 60:.1f} min, {mine[-1][1]:.0f} MiB at "
            f"{mine[-1][0] / 60:.1f} min (max {max(v for _, v in mine):.0f})"
        )
    return f"Worker memory from /metrics (convzoo_process_resident_memory_bytes): {'; '.join(parts)}"


def plot_soak(
    path: Path, log: Path, workers: list[tuple[float, str, float]], title: str, minutes: float
) -> None:
    """Worker memory (MiB) over minutes, from /metrics, beside p50/p99 per full minute (Locust),
    the minutes of the report's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log.open(newline="") as handle:
        rows = [(float(r["start_s"]), float(r["latency_ms"])) for r in csv.DictReader(handle)]
    figure, (memory, latency) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for pid in dict.fromkeys(p for _, p, _ in workers):
        mine = [(t, v) for t, p, v in workers if p == pid]
        memory.plot([t / 60 for t, _ in mine], [v for _, v in mine], marker=".", label=f"worker pid {pid}")
    memory.set_xlabel("minutes")
    memory.set_ylabel("resident memory, MiB (/metrics)")
    memory.set_ylim(bottom=0)
    memory.set_title("Worker memory", fontsize=10)
    if workers:
        memory.legend(fontsize=8)
    if rows:
        t0 = min(t for t, _ in rows)
        per_minute: dict[int, list[float]] = {}
        for start, value in rows:
            per_minute.setdefault(int((start - t0) // 60), []).append(value)
        full = [m for m in sorted(per_minute) if m < int(minutes)] or sorted(per_minute)
        for q in (50, 99):
            latency.plot(
                [m + 1 for m in full],
                [_percentile(per_minute[m], q) for m in full],
                marker="o",
                label=f"p{q}",
            )
        latency.legend(fontsize=8)
    latency.set_xlabel("minute")
    latency.set_ylabel("latency, ms (Locust)")
    latency.set_ylim(bottom=0)
    latency.set_title("Latency per minute", fontsize=10)
    for axes in (memory, latency):
        axes.grid(True, alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def soak_report(log: Path, rss: list[tuple[float, float]], rate: float, minutes: float) -> list[str]:
    with log.open(newline="") as handle:
        rows = [(float(r["start_s"]), float(r["latency_ms"]), r["ok"] == "1") for r in csv.DictReader(handle)]
    t0 = min(r[0] for r in rows)
    per_minute: dict[int, list[float]] = {}
    for start, latency, _ in rows:
        per_minute.setdefault(int((start - t0) // 60), []).append(latency)
    full = [m for m in sorted(per_minute) if m < int(minutes)] or sorted(per_minute)
    p99 = {m: _percentile(per_minute[m], 99) for m in full}
    failed = sum(1 for r in rows if not r[2])
    first, last = p99[full[0]], p99[full[-1]]
    after_warmup = next((v for t, v in rss if t >= 60), rss[0][1])
    growth = rss[-1][1] / after_warmup - 1
    lines = [
        f"Offered load: {rate:.1f} requests/s; {len(rows)} requests in {minutes:g} min, "
        f"{len(rows) / (minutes * 60):.1f}/s served",
        "| minute | requests | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *[
            f"| {m + 1} | {len(per_minute[m])} | {_percentile(per_minute[m], 50):.0f} | {p99[m]:.0f} |"
            for m in full
        ],
        f"RSS of all service processes: {rss[0][1]:.0f} MiB at start, {after_warmup:.0f} MiB after "
        f"minute 1, {rss[-1][1]:.0f} MiB at the end (max {max(v for _, v in rss):.0f})",
        "",
        _verdict("no failed request", failed == 0, f"{failed} failed of {len(rows)}"),
        _verdict(
            "p99 stable (last minute within 25 % of the first)",
            abs(last / first - 1) <= 0.25,
            f"{first:.0f} ms -> {last:.0f} ms ({last / first - 1:+.0%})",
        ),
        _verdict("RSS growth after warm-up < 10 %", growth < 0.10, f"{growth:+.1%}"),
    ]
    return lines


def overload(args, server: RunningServer, bodies, saturation: float, out: Path) -> list[str]:
    low, high = BASELINE_LOAD * saturation, args.factor * saturation
    phases = [
        ("before", low, args.seconds / 2),
        ("overload", high, args.seconds),
        ("after", low, args.seconds),
    ]
    print(
        f"[overload] {low:.1f}/s for {args.seconds / 2:g} s, {high:.1f}/s ({args.factor:g}x) for "
        f"{args.seconds:g} s, {low:.1f}/s for {args.seconds:g} s",
        flush=True,
    )
    records = asyncio.run(open_loop(server.url, bodies, phases, args.timeout + 15))
    _write_records(out / "overload_requests.csv", records)
    baseline = statistics.median(r.latency_s for r in records if r.phase == "before" and r.status == "200")
    drop_at = args.seconds / 2 + args.seconds
    recovery = _recovery_s(records, drop_at, 1.5 * baseline)
    lines = [f"Saturation {saturation:.1f} requests/s; baseline (0.5x) median {baseline * 1000:.0f} ms"]
    lines += _phase_table(records)
    bad = sorted({r.status for r in records} - {"200", "429", "503"})
    slowest = max(r.latency_s for r in records)
    lines += [
        "",
        _verdict("only 200, 429 or 503 with a JSON error", not bad, f"other outcomes: {bad or 'none'}"),
        _verdict(
            f"no request slower than the timeout ({args.timeout} s)",
            slowest < args.timeout,
            f"slowest {slowest:.2f} s",
        ),
        _verdict(
            f"latency back to normal within {RECOVERY_TARGET_S:g} s of the drop",
            recovery is not None and recovery <= RECOVERY_TARGET_S,
            f"{recovery:.1f} s" if recovery is not None else "never",
        ),
    ]
    return lines


def kill_worker(args, server: RunningServer, bodies, saturation: float, out: Path) -> list[str]:
    rate = BASELINE_LOAD * saturation
    victims = [
        p
        for p in psutil.Process(server.process.pid).children(recursive=True)
        if WORKER_COMMAND in " ".join(p.cmdline())
    ]
    if len(victims) != args.workers:
        raise RuntimeError(
            f"expected {args.workers} workers under pid {server.process.pid}, found {len(victims)}"
        )
    killed_at = 10.0
    print(
        f"[kill-worker] {rate:.1f} requests/s for {args.seconds:g} s; kill -9 of worker pid "
        f"{victims[0].pid} (of {args.workers}) at {killed_at:g} s",
        flush=True,
    )
    records = asyncio.run(
        open_loop(
            server.url,
            bodies,
            [("steady", rate, args.seconds)],
            args.timeout + 15,
            at_second=(killed_at, victims[0].kill),
        )
    )
    _write_records(out / "kill_worker_requests.csv", records)
    before = [r.latency_s for r in records if r.sent_s < killed_at and r.status == "200"]
    baseline = statistics.median(before)
    failed = [r for r in records if r.status != "200"]
    recovery = _recovery_s(records, killed_at, 1.5 * baseline)
    window = (max(r.sent_s + r.latency_s for r in failed) - min(r.sent_s for r in failed)) if failed else 0
    return [
        f"{rate:.1f} requests/s; kill -9 of 1 of {args.workers} workers at {killed_at:g} s; "
        f"baseline median {baseline * 1000:.0f} ms",
        f"Failed requests: {len(failed)} of {len(records)} "
        f"({', '.join(sorted({r.status for r in failed})) or 'none'}), over {window:.1f} s",
        f"Slowest request: {max(r.latency_s for r in records):.1f} s; latency back to the baseline "
        f"{f'{recovery:.1f} s' if recovery is not None else 'never'} after the kill",
    ]


# -------------------------------------------------------------------------------------- helpers


def _recovery_s(records: list[Record], since: float, target_s: float) -> float | None:
    """Seconds from ``since`` until the first 1-s window (by send time) answered all 200 within
    ``target_s`` (median) — counted to the end of that window."""
    later = [r for r in records if r.sent_s >= since]
    for second in range(int(max((r.sent_s for r in later), default=since) - since) + 1):
        window = [r for r in later if since + second <= r.sent_s < since + second + 1]
        if (
            window
            and all(r.status == "200" for r in window)
            and (statistics.median(r.latency_s for r in window) <= target_s)
        ):
            return second + 1 + max(r.latency_s for r in window)
    return None


def _phase_table(records: list[Record]) -> list[str]:
    lines = [
        "| phase | sent | 200 | 429 | 503 | other | p50 ms (200) | p99 ms (200) | slowest refusal ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in dict.fromkeys(r.phase for r in records):
        rows = [r for r in records if r.phase == phase]
        ok = [r.latency_s * 1000 for r in rows if r.status == "200"]
        refused = [r.latency_s * 1000 for r in rows if r.status in ("429", "503")]
        counts = {s: sum(r.status == s for r in rows) for s in ("200", "429", "503")}
        lines.append(
            f"| {phase} | {len(rows)} | {counts['200']} | {counts['429']} | {counts['503']} "
            f"| {len(rows) - sum(counts.values())} | {_percentile(ok, 50):.0f} | "
            f"{_percentile(ok, 99):.0f} | {max(refused, default=0):.0f} |"
        )
    return lines


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _verdict(target: str, passed: bool, measured: str) -> str:
    return f"- {'pass' if passed else 'FAIL'}: {target}: {measured}"


def _write_records(path: Path, records: list[Record]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sent_s", "status", "latency_s", "phase"])
        writer.writerows((f"{r.sent_s:.4f}", r.status, f"{r.latency_s:.4f}", r.phase) for r in records)


def _write_worker_memory(path: Path, workers: list[tuple[float, str, float]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "pid", "rss_mib"])
        writer.writerows((f"{t:.1f}", pid, f"{v:.1f}") for t, pid, v in workers)


def _write_rss(path: Path, rss: list[tuple[float, float]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "rss_mib"])
        writer.writerows((f"{t:.1f}", f"{v:.1f}") for t, v in rss)


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["soak", "overload", "kill-worker"])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    add_image_set_argument(parser)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--saturation-rps", type=float, help="skip the probe; use this throughput")
    parser.add_argument("--probe-users", type=int, default=16)
    parser.add_argument("--probe-seconds", type=float, default=30)
    parser.add_argument("--minutes", type=float, default=10, help="soak: duration")
    parser.add_argument("--load", type=float, default=0.8, help="soak: fraction of saturation")
    parser.add_argument("--soak-users", type=int, default=16, help="soak: paced Locust users")
    parser.add_argument("--factor", type=float, default=4, help="overload: x saturation")
    parser.add_argument(
        "--seconds", type=float, default=20, help="overload: overload phase; kill-worker: the whole run"
    )
    parser.add_argument("--workers", type=int, default=1, help="CONVZOO_WORKERS of the service")
    parser.add_argument("--max-concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=int, default=30, help="CONVZOO_TIMEOUT_S of the service")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.no_pin:
        args.server_cpus = args.client_cpus = None
    out = args.out or RESULTS_DIR / f"reliability-{args.mode}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    ref = resolve(args.model, args.models_dir)
    images = list(image_set(args.image_set).paths)
    bodies = [encode_multipart([(p.name, p.read_bytes())]) for p in images]
    os.environ.update(
        CONVZOO_MAX_CONCURRENCY=str(args.max_concurrency),
        CONVZOO_TIMEOUT_S=str(args.timeout),
        CONVZOO_WORKERS=str(args.workers),
    )
    header = [
        f"# Reliability: {args.mode}",
        "",
        f"Date: {datetime.now().isoformat(timespec='seconds')}; machine: {cpu_count()} CPUs, "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"Model: {ref.spec}; {len(images)} images (--image-set {args.image_set}), 1 per request",
        f"Service: CONVZOO_WORKERS={args.workers}, CONVZOO_MAX_CONCURRENCY={args.max_concurrency}, "
        f"CONVZOO_TIMEOUT_S={args.timeout}; "
        f"server CPUs {args.server_cpus or 'all'}, client CPUs {args.client_cpus or 'all'}",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.reliability', *argv])}`",
        "",
    ]
    with RunningServer(
        SERVERS["bentoml"], ref, args.models_dir, args.server_cpus, out / "server.log"
    ) as server:
        print(f"[server] ready after {server.wait_ready():.1f} s on {server.url}", flush=True)
        check_metadata(server.url, ref)
        warm_up(server.url, images)
        if args.client_cpus:
            os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
        saturation = args.saturation_rps or _probe(args, server, images, out)
        mode = {
            "soak": lambda: soak(args, server, images, saturation, out),
            "overload": lambda: overload(args, server, bodies, saturation, out),
            "kill-worker": lambda: kill_worker(args, server, bodies, saturation, out),
        }[args.mode]
        lines = (
            header
            + [
                f"Saturation: {saturation:.1f} requests/s"
                f"{' (given)' if args.saturation_rps else ' (closed-loop probe)'}",
                "",
            ]
            + mode()
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[2:]), f"\nreport: {out / 'report.md'}", sep="\n")
    return 1 if any(line.startswith("- FAIL") for line in lines) else 0


def _probe(args, server: RunningServer, images: list[Path], out: Path) -> float:
    step = run_step(
        "bentoml",
        server.url,
        args.probe_users,
        args.probe_seconds,
        images,
        1,
        out / "probe" / f"u{args.probe_users}",
        args.client_cpus,
    )
    print(
        f"[probe] {args.probe_users} users, closed loop: {step.requests_per_s:.1f} requests/s, "
        f"p50 {step.p50_ms:.0f} ms, {step.failures} failures",
        flush=True,
    )
    return step.requests_per_s


if __name__ == "__main__":
    sys.exit(main())
