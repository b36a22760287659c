"""Where a served request's CPU goes: the server's CPU per request on ``/v2`` (binary) and
``/classify``, per thread of its worker, for variants run in interleaved rounds; optionally a
py-spy profile of the worker, grouped by layer.

    python -m benchmarks.http_served base: --rounds 1 --py-spy benchmarks/results/http_served
    python -m benchmarks.http_served before@/tmp/convzoo-before: after: --rounds 5
    python -m benchmarks.http_served one: two:CONVZOO_WORKERS=2 --server-cpus 0,1 --client-cpus 0,1

Each variant is ``NAME[@CHECKOUT]:[VAR=VALUE,...]`` as for ``benchmarks.ab``. Every round starts
each variant's server in turn (``bentoml serve``, ``taskset -c 1``), warms it up, and for each
route runs ``benchmarks.http_client`` (``taskset -c 0``; asyncio, keep-alive connections,
prepared requests: much leaner than Locust, whose CPU would crowd a shared machine) for
``--seconds`` after ``--warmup``. Figures of the measured window only:

- server CPU ms per request: user + system of the server's whole process tree (``benchmarks.ab``'s
  measure), divided by the requests answered;
- per thread of the worker (``/proc/<pid>/task/*/stat``): the main thread (uvicorn's event loop),
  the busiest other thread (the model's thread, which also decodes when the worker has one CPU)
  and all others together, in ms per request;
- requests/s, p50 and p99 as the client saw them, and the client's own CPU.

The summary gives the median of each figure over the rounds. With ``--py-spy DIR`` (first round
only, its figures then perturbed by the sampling) each window is also sampled
(``py-spy record --threads -f raw``) and ``profile_table`` attributes every sample of the worker
to a layer (``LAYERS``): the innermost frame that belongs to a known file decides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.ab import Variant, cpu_seconds
from benchmarks.images import add_image_set_argument, image_set
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, resolve
from benchmarks.servers import SERVERS, RunningServer, pin_prefix, warm_up

TICKS = os.sysconf("SC_CLK_TCK")
ROUTES = ("v2", "classify")


@dataclass
class Figures:
    server_ms: list[float] = field(default_factory=list)
    loop_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    other_ms: list[float] = field(default_factory=list)
    requests_per_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU ticks (user + system) of each thread of ``pid`` so far."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def workers(server_pid: int) -> list[psutil.Process]:
    """The server's worker processes: its descendants that run the service (BentoML's
    ``_bentoml_impl.worker.service``)."""
    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if any("worker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def measure(server: RunningServer, route: str, images: list[Path], args, profile: Path | None) -> dict:
    """One window of ``route`` against ``server``: its figures (module docstring)."""
    pids = [w.pid for w in workers(server.process.pid)]
    command = pin_prefix(args.client_cpus) + [
        sys.executable,
        "-m",
        "benchmarks.http_client",
        "--url",
        server.url,
        "--route",
        route,
        "--model",
        resolve(args.model, args.models_dir).name,
        "--clients",
        str(args.clients),
        "--warmup",
        str(args.warmup),
        "--seconds",
        str(args.seconds),
        *map(str, images),
    ]
    client = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    spy = None
    result: dict = {}
    for line in client.stdout:
        if line.strip() == "START":
            tree, before = cpu_seconds(server.process.pid), {pid: thread_ticks(pid) for pid in pids}
            if profile is not None:
                spy = subprocess.Popen(
                    pin_prefix(args.client_cpus)
                    + [shutil.which("py-spy") or "py-spy", "record", "--threads", "-f", "raw"]
                    + ["-r", "100", "-d", str(int(args.seconds)), "-o", str(profile), "--pid", str(pids[0])],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        elif line.strip() == "END":
            tree = cpu_seconds(server.process.pid) - tree
            after = {pid: thread_ticks(pid) for pid in pids}
        elif line.startswith("{"):
            result = json.loads(line)
    client.wait()
    if spy is not None:
        spy.wait()
    if not result.get("requests"):
        raise RuntimeError(f"{route}: no request answered ({result})")
    count = result["requests"]
    loop = model = other = 0.0
    for pid in pids:
        used = {tid: after[pid].get(tid, 0) - before[pid].get(tid, 0) for tid in after[pid]}
        loop += used.pop(pid, 0)
        busiest = max(used.values(), default=0)
        model += busiest
        other += sum(used.values()) - busiest
    per_request = 1e3 / TICKS / count
    return {
        **result,
        "server_ms": 1e3 * tree / count,
        "loop_ms": loop * per_request,
        "model_ms": model * per_request,
        "other_ms": other * per_request,
        "client_cores": result["client_cpu_s"] / result["seconds"],
    }


LAYERS = (
    ("decode (PIL, simplejpeg)", ("service/serving/images.py", "PIL/", "simplejpeg")),
    ("model (OpenVINO call)", ("service/runtimes.py", "openvino/")),
    ("batcher", ("service/serving/batching.py",)),
    (
        "data plane",
        ("service/serving/dataplane.py", "service/serving/registry.py", "service/serving/limits.py"),
    ),
    ("JSON", ("json/", "service/serving/jsonbody.py")),
    ("protocol adapter (oip, convzoo)", ("service/protocols/", "service/answers.py")),
    (
        "our guards (body, form, key)",
        ("service/http/body.py", "service/http/forms.py", "service/http/auth.py"),
    ),
    (
        "our wrappers (route labels, escaped log, always-answer)",
        ("service/http/app.py", "service/http/asgi.py"),
    ),
    ("our head guard (connection)", ("service/http/connection.py",)),
    ("BentoML metrics (prometheus_client)", ("http/instruments.py", "prometheus_client/")),
    ("BentoML access log (logging)", ("http/access.py", "logging/")),
    ("BentoML timeout + max concurrency", ("http/traffic.py",)),
    ("BentoML context + Starlette routing", ("_bentoml_impl/", "bentoml/", "starlette/")),
    ("anyio (threads, cancel scopes)", ("anyio/",)),
    ("uvicorn (httptools protocol)", ("uvicorn/", "httptools")),
    ("asyncio / uvloop scheduling", ("asyncio/", "uvloop", "concurrent/futures", "threading.py")),
)
"""A sample belongs to the first layer (in this order) of the innermost frame whose file names one."""

FRAME = re.compile(r"\((?P<file>[^():]+):\d+\)$")
THREAD = re.compile(r"^thread \((?P<id>[^)]+)\)")


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        match = FRAME.search(frame)
        if match is None:
            continue
        path = match["file"]
        for name, parts in LAYERS:
            if any(part in path for part in parts):
                return name
    return "other"


def profile_table(raw: Path, loop_tid: int | None = None) -> tuple[dict[str, Counter], Counter]:
    """{thread: Counter(layer -> samples)} of a ``py-spy record --threads -f raw`` file, and the
    totals per thread (with ``loop_tid``: "event loop", the thread of that id or Python's
    ``MainThread``, where uvicorn runs the loop, and "other threads")."""
    layers: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        if frames and (match := THREAD.match(frames[0])):
            thread = match["id"]
            frames = frames[1:]
        if loop_tid is not None:
            main = thread.lower() in (str(loop_tid), hex(loop_tid)) or "MainThread" in stack.split(";")[0]
            thread = "event loop" if main else "other threads"
        layers[thread][layer_of(frames)] += int(count)
        totals[thread] += int(count)
    return layers, totals


def format_profile(raw: Path, loop_tid: int) -> str:
    layers, totals = profile_table(raw, loop_tid)
    everything = sum(totals.values()) or 1
    lines = [
        f"py-spy samples of the worker ({raw.name}, {everything} active samples at 100 Hz):",
        "",
        "| layer | event loop | other threads | all |",
        "|---|---:|---:|---:|",
    ]
    names = sorted({n for c in layers.values() for n in c}, key=lambda n: -sum(c[n] for c in layers.values()))
    for name in names:
        loop, other = layers["event loop"][name], layers["other threads"][name]
        lines.append(
            f"| {name} | {100 * loop / everything:.1f} % | {100 * other / everything:.1f} % "
            f"| {100 * (loop + other) / everything:.1f} % |"
        )
    return "\n".join(lines)


def summary(results: dict[tuple[str, str], Figures]) -> str:
    lines = [
        "",
        "| variant | route | server CPU ms/request | event loop | model thread | other threads "
        "| requests/s | p50 ms | p99 ms | client cores | server ms, every round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (name, route), f in results.items():
        m = statistics.median
        lines.append(
            f"| {name} | {route} | {m(f.server_ms):.3f} | {m(f.loop_ms):.3f} | {m(f.model_ms):.3f} "
            f"| {m(f.other_ms):.3f} | {m(f.requests_per_s):.1f} | {m(f.p50_ms):.2f} | {m(f.p99_ms):.1f} "
            f"| {m(f.client_cores):.2f} | {', '.join(f'{x:.3f}' for x in f.server_ms)} |"
        )
    return "\n".join(lines)


def run_variant(variant: Variant, round_index: int, routes, ref, images, args, results) -> None:
    """One server start of ``variant``: a window per route, its figures added to ``results``."""
    saved = {key: os.environ.get(key) for key in variant.env}
    os.environ.update(variant.env)
    log = args.out / "logs" / f"{variant.name}-r{round_index}.log"
    try:
        with RunningServer(
            SERVERS["bentoml"], ref, args.models_dir, args.server_cpus, log, repo=variant.checkout
        ) as server:
            server.wait_ready()
            warm_up(server.url, images[:40])
            for route in routes:
                profile = None
                if args.py_spy is not None and round_index == 1:
                    args.py_spy.mkdir(parents=True, exist_ok=True)
                    profile = args.py_spy / f"{variant.name}-{route}.txt"
                got = measure(server, route, images, args, profile)
                f = results[variant.name, route]
                for key in ("server_ms", "loop_ms", "model_ms", "other_ms", "requests_per_s"):
                    getattr(f, key).append(got[key])
                f.p50_ms.append(got["p50_ms"])
                f.p99_ms.append(got["p99_ms"])
                f.client_cores.append(got["client_cores"])
                print(
                    f"round {round_index} {variant.name} {route}: server {got['server_ms']:.3f} "
                    f"ms/request (loop {got['loop_ms']:.3f}, model thread {got['model_ms']:.3f}, "
                    f"other {got['other_ms']:.3f}), {got['requests_per_s']:.1f} requests/s, "
                    f"p50 {got['p50_ms']:.2f} ms, p99 {got['p99_ms']:.1f} ms, client "
                    f"{got['client_cores']:.2f} cores, {got['failures']} failures "
                    f"{got['first_failure'][:60]}",
                    flush=True,
                )
                if profile is not None and profile.is_file():
                    print(format_profile(profile, workers(server.process.pid)[0].pid), flush=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_served",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("variants", nargs="+", help="NAME[@CHECKOUT]:[VAR=VALUE,...]")
    parser.add_argument("--routes", default="v2,classify", help="comma-separated: v2, classify")
    parser.add_argument("--model", default=os.environ.get("CONVZOO_MODEL") or DEFAULT_MODEL)
    add_image_set_argument(parser)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--py-spy", type=Path, default=None, help="profile the first round into DIR")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "http_served")
    args = parser.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    if not set(routes) <= set(ROUTES):
        parser.error(f"--routes: choose from {', '.join(ROUTES)}")
    try:
        variants = [Variant.parse(text) for text in args.variants]
    except ValueError as error:
        parser.error(str(error))
    ref = resolve(args.model, args.models_dir)
    images = list(image_set(args.image_set).paths)
    results = {(v.name, r): Figures() for v in variants for r in routes}
    for round_index in range(1, args.rounds + 1):
        for variant in variants:
            run_variant(variant, round_index, routes, ref, images, args, results)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
