"""Where a served request's CPU goes: the server's CPU per request on ``/v2`` (binary) and
``/classify``, per thread of its worker, for variants run in interleaved rounds; optionally a
py-spy profile of the worker, grouped by layer.

    python -m benchmarks.http_served base: --rounds 1 --py-spy benchmarks/results/http_served
    python -m benchmarks.http_served before@/tmp/convzoo-before: after: --rounds 5
    python -m benchmarks.http_served one: two:CONVZOO_WORKERS=2 --server-cpus 0,1 --client-cpus 0,1
    python -m benchmarks.http_served shared: apart: --apart apart --loop-cpus 0 --model-cpus 1 --clients 32,64

Each variant is ``NAME[@CHECKOUT]:[VAR=VALUE,...]`` as for ``benchmarks.ab``. Every round starts
each variant's server in turn (``bentoml serve``, ``taskset -c 1``), warms it up, and for each
route runs ``benchmarks.http_client`` (``taskset -c 0``; asyncio, keep-alive connections,
prepared requests: much leaner than Locust, whose CPU would crowd a shared machine) for
``--seconds`` after ``--warmup``, once per ``--clients`` count. With ``--loop-cpus`` and
``--model-cpus``, the variants named by ``--apart`` (default: all) have their worker's threads
pinned apart once the server is up (``Apart``: the model's thread, found by its native name
``convzoo-model``, on ``--model-cpus``; the event loop and every other thread of the worker on
``--loop-cpus``), each thread's allowed CPUs read back from ``/proc`` and printed, and pinned again
as each window starts (OpenVINO moves a thread that runs an inference back to the model's CPUs).
The server still starts on ``--server-cpus``, so its settings (one CPU: decoding in the batch, one
inference thread) are those of the shared variant. Figures of the measured window only:

- server CPU ms per request: user + system of the server's whole process tree (``benchmarks.ab``'s
  measure), divided by the requests answered;
- per thread of the worker (``/proc/<pid>/task/*/stat``): the main thread (uvicorn's event loop),
  the model's thread (``convzoo-model`` by its native name, ``service.serving.threads``; in a
  checkout that does not name it, the busiest other thread; it also decodes when the worker has
  one CPU) and all others together, in ms per request; and every thread that ran, by name, with
  the CPUs it is allowed on;
- the model's thread's share of a core (its CPU seconds over the window's: 1.0 is a model that never
  waits), the share of the window its CPUs (``--model-cpus``, else ``--server-cpus``) were idle
  (``/proc/stat``: a model that waits for work leaves them idle, one that waits for another
  process's job does not), and the mean images a model call (the server's ``convzoo_batch_size``);
- requests/s, p50 and p99 as the client saw them, the client's own CPU, the 1-minute load average.

The summary gives the median of each figure over the rounds, and each variant's requests/s over
the first variant's, round by round (on a shared machine the ratio is the result). With
``--py-spy DIR`` (first round only, its figures then perturbed by the sampling) each window is also
sampled (``py-spy record --threads -f raw``) and ``profile_table`` attributes every sample of the worker
to a layer (``LAYERS``): the innermost frame that belongs to a known file decides.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil
import requests

from benchmarks.ab import Variant, cpu_seconds
from benchmarks.images import add_image_set_argument, image_set
from benchmarks.load import _ceiling
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, resolve
from benchmarks.raw import parse_cpus
from benchmarks.servers import SERVERS, RunningServer, free_port, pin_prefix, warm_up
from service.serving.threads import MODEL_THREAD

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
    load_average: list[float] = field(default_factory=list)
    model_busy: list[float] = field(default_factory=list)
    mean_batch: list[float] = field(default_factory=list)
    model_cpus_idle: list[float] = field(default_factory=list)


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


def thread_name(pid: int, tid: int) -> str:
    """The thread's name as the kernel shows it (``comm``: ``convzoo-model`` for the model's
    thread, ``service.serving.threads``), or ``""`` once it is gone."""
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


def allowed_cpus(pid: int, tid: int) -> str:
    """``Cpus_allowed_list`` of the thread (``/proc/<pid>/task/<tid>/status``), or ``"?"``."""
    try:
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    except OSError:
        return "?"
    match = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.MULTILINE)
    return match[1] if match else "?"


def model_threads(pid: int) -> list[int]:
    """The threads of the worker ``pid`` named ``convzoo-model`` (one per model version)."""
    return [
        int(task.name)
        for task in Path(f"/proc/{pid}/task").iterdir()
        if thread_name(pid, int(task.name)).startswith(MODEL_THREAD)
    ]


def start_model_thread(server: RunningServer, images: list[Path], pid: int) -> None:
    """Make the worker start its model's thread: the batcher makes it at the first batch, and a
    lone request runs in the event loop's thread instead (``Batcher(at_once=True)``), so send
    requests side by side until a thread named ``convzoo-model`` is there."""

    def post(path: Path) -> int:
        files = {"images": (path.name, path.read_bytes())}
        return requests.post(f"{server.url}/classify", files=files, timeout=60).status_code

    for _ in range(10):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(post, images[:16]))
        if model_threads(pid):
            return
    raise RuntimeError(
        f"no thread named {MODEL_THREAD!r} in the worker {pid}: is it named (service.serving.threads)?"
    )


class Apart:
    """The worker's threads pinned apart, the server already started on ``--server-cpus`` (its
    settings, one CPU's, follow from that): the model's thread (``convzoo-model``) on
    ``model_cpus``, the worker's every other thread (the event loop's, the watcher, the pools, the
    runtime's idle ones) on ``loop_cpus``, every other process of the server (BentoML's arbiter) on
    both. A thread started later inherits the affinity of the thread that starts it.

    ``pin()`` is called again at the start of every window: OpenVINO (``ENABLE_CPU_PINNING``, on by
    default) pins every thread that runs an inference to the CPUs it chose when the model was
    compiled, that is, the server's: a lone request that the event loop runs itself
    (``Batcher(at_once=True)``, a client's first request) puts the loop back on the model's CPU.
    So ``--model-cpus`` should be the server's own CPUs."""

    def __init__(self, server: RunningServer, loop_cpus: set[int], model_cpus: set[int]) -> None:
        self.server = server
        self.loop_cpus = loop_cpus
        self.model_cpus = model_cpus
        self.pids = [w.pid for w in workers(server.process.pid)]

    def wanted(self) -> dict[tuple[int, int], set[int]]:
        """(process, thread) -> the CPUs it belongs on, for every thread of the server now."""
        children = psutil.Process(self.server.process.pid).children(recursive=True)
        wanted: dict[tuple[int, int], set[int]] = {}
        for pid in [self.server.process.pid, *(child.pid for child in children)]:
            for task in Path(f"/proc/{pid}/task").iterdir():
                tid = int(task.name)
                if pid not in self.pids:
                    wanted[pid, tid] = self.loop_cpus | self.model_cpus
                elif thread_name(pid, tid).startswith(MODEL_THREAD):
                    wanted[pid, tid] = self.model_cpus
                else:
                    wanted[pid, tid] = self.loop_cpus
        return wanted

    def pin(self) -> tuple[list[str], list[str]]:
        """Every thread put where it belongs and read back from ``/proc`` (raises when one is not
        there): the table of every thread, and the threads that had moved (``tid name: was``)."""
        table = ["| process | thread | name | allowed CPUs |", "|---|---|---|---|"]
        moved = []
        for (pid, tid), cpus in self.wanted().items():
            was = allowed_cpus(pid, tid)
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                continue
            allowed = allowed_cpus(pid, tid)
            if allowed != "?" and set(parse_cpus(allowed)) != cpus:
                raise RuntimeError(f"thread {tid} of {pid}: allowed on {allowed}, not {sorted(cpus)}")
            if was not in ("?", allowed):
                moved.append(f"{tid} {thread_name(pid, tid) or '?'} was on {was}")
            role = "worker" if pid in self.pids else "server"
            table.append(f"| {role} {pid} | {tid} | {thread_name(pid, tid)} | {allowed} |")
        return table, moved


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


def py_spy() -> str:
    """py-spy beside this Python (a virtual environment's), else on the PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file():
        return str(beside)
    if found := shutil.which("py-spy"):
        return found
    raise SystemExit("--py-spy: py-spy is not installed (pip install py-spy)")


def cpu_idle() -> dict[int, tuple[int, int]]:
    """{CPU: (idle + iowait ticks, all ticks)} so far, from ``/proc/stat``."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            numbers = [int(t) for t in ticks]
            found[int(name[3:])] = (numbers[3] + numbers[4], sum(numbers[:8]))
    return found


def idle_share(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: set[int]
) -> float:
    """The share of ``cpus``' time in the window that nothing ran on them (0: always busy, with our
    threads or anyone's)."""
    idle = sum(after[c][0] - before[c][0] for c in cpus if c in before and c in after)
    total = sum(after[c][1] - before[c][1] for c in cpus if c in before and c in after)
    return idle / total if total else 0.0


BATCH_SERIES = re.compile(r"^convzoo_batch_size_(sum|count)\{[^}]*\} (\S+)$", re.MULTILINE)


def batches(url: str) -> tuple[float, float] | None:
    """(images, model calls) so far, from the server's ``convzoo_batch_size`` histogram (every
    model version summed); None where there is none (the trivial app)."""
    try:
        text = requests.get(f"{url}/metrics", timeout=10).text
    except requests.RequestException:
        return None
    found = {"sum": 0.0, "count": 0.0}
    for kind, value in BATCH_SERIES.findall(text):
        found[kind] += float(value)
    return (found["sum"], found["count"]) if found["count"] else None


def model_cpus(args) -> set[int]:
    """The CPUs the model runs on: ``--model-cpus``, else the server's."""
    if args.model_cpus:
        return set(args.model_cpus)
    return set(parse_cpus(args.server_cpus)) if args.server_cpus else set(os.sched_getaffinity(0))


def measure(
    server: RunningServer,
    route: str,
    images: list[Path],
    args,
    profile: Path | None,
    clients: int,
    apart: Apart | None = None,
) -> dict:
    """One window of ``route`` against ``server`` with ``clients`` clients: its figures (module
    docstring). ``apart``: its threads pinned again as the window starts (``Apart``)."""
    pids = [w.pid for w in workers(server.process.pid)] or [server.process.pid]  # the floor: one process
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
        str(clients),
        "--warmup",
        str(args.warmup),
        "--seconds",
        str(args.seconds),
        *map(str, images),
    ]
    client = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    spy = None
    result: dict = {}
    repinned: list[str] = []
    batches_before = batches_after = None
    idle_before = idle_after = {}
    for line in client.stdout:
        if line.strip() == "START":
            repinned = apart.pin()[1] if apart is not None else []
            batches_before, idle_before = batches(server.url), cpu_idle()
            tree, before = cpu_seconds(server.process.pid), {pid: thread_ticks(pid) for pid in pids}
            if profile is not None:
                spy = subprocess.Popen(
                    pin_prefix(args.client_cpus)
                    + [py_spy(), "record", "--threads", "-f", "raw"]
                    + ["-r", "100", "-d", str(int(args.seconds)), "-o", str(profile), "--pid", str(pids[0])],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        elif line.strip() == "END":
            tree = cpu_seconds(server.process.pid) - tree
            after = {pid: thread_ticks(pid) for pid in pids}
            batches_after, idle_after = batches(server.url), cpu_idle()
        elif line.startswith("{"):
            result = json.loads(line)
    client.wait()
    if spy is not None:
        spy.wait()
    if not result.get("requests"):
        raise RuntimeError(f"{route}: no request answered ({result})")
    load_average = os.getloadavg()[0]
    count = result["requests"]
    loop = model = other = 0.0
    busy = []  # (pid, tid, name, ticks) of every thread that ran in the window
    for pid in pids:
        used = {tid: after[pid].get(tid, 0) - before[pid].get(tid, 0) for tid in after[pid]}
        busy += [(pid, tid, thread_name(pid, tid), n) for tid, n in used.items() if n > 0]
        loop += used.pop(pid, 0)
        named = [tid for tid in used if thread_name(pid, tid).startswith(MODEL_THREAD)]
        # the model's thread by its native name; a checkout that does not name it: the busiest
        models = sum(used[tid] for tid in named) if named else max(used.values(), default=0)
        model += models
        other += sum(used.values()) - models
    per_request = 1e3 / TICKS / count
    batch = None
    if batches_before is not None and batches_after is not None and batches_after[1] > batches_before[1]:
        batch = (batches_after[0] - batches_before[0]) / (batches_after[1] - batches_before[1])
    return {
        **result,
        "server_ms": 1e3 * tree / count,
        "loop_ms": loop * per_request,
        "model_ms": model * per_request,
        "other_ms": other * per_request,
        "client_cores": result["client_cpu_s"] / result["seconds"],
        "model_busy": model / TICKS / result["seconds"],
        "mean_batch": batch,
        "model_cpus_idle": idle_share(idle_before, idle_after, model_cpus(args)),
        "load_average": load_average,
        "repinned": repinned,
        "threads": [
            f"{tid} {name or '?'} on {allowed_cpus(pid, tid)}: {n * per_request:.3f} ms"
            for pid, tid, name, n in sorted(busy, key=lambda row: -row[3])
        ],
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
    (
        "BentoML metrics (prometheus_client)",
        ("http/instruments.py", "prometheus_client/", "service/http/traffic.py"),
    ),
    ("BentoML access log (logging)", ("http/access.py", "logging/")),
    ("BentoML timeout + max concurrency", ("http/traffic.py",)),
    (
        "BentoML context + Starlette (routing, request, response, errors)",
        ("_bentoml_impl/", "bentoml/", "starlette/"),
    ),
    ("anyio (threads, cancel scopes)", ("anyio/",)),
    ("uvicorn's protocol (Python: headers, ASGI messages)", ("uvicorn/protocols/",)),
    (
        "asyncio (tasks, futures, events in Python)",
        ("asyncio/tasks.py", "asyncio/futures.py", "asyncio/locks.py"),
    ),
)
"""A sample belongs to the first layer (in this order) of the innermost frame whose file names one;
what is below no such frame is ``NATIVE`` (the event loop's own C: uvloop's socket reads and
writes, httptools' parsing, the callbacks' C parts) or, for a waiting thread, ``IDLE``."""
NATIVE = "uvloop + httptools in C (sockets, HTTP parsing, loop)"
OTHER_NATIVE = "other (no known frame)"
IDLE = "waiting (not CPU)"
WAITING = (
    "_worker (concurrent/futures/thread.py",
    "wait (threading.py",
    "get (queue.py",
    "_run (service/serving/watcher.py",
)

FRAME = re.compile(r"\((?P<file>[^():]+):\d+\)$")
THREAD = re.compile(r"^thread \((?P<id>[^)]+)\)(?::\s*(?P<name>.*))?")
GROUPS = ("event loop", "model thread", "other threads")


LOOP_RUN = ("asyncio/runners.py", "asyncio/base_events.py", "uvloop/__init__.py")
"""Frames of the event loop's own run: the frames above them (uvicorn's and BentoML's start-up)
say nothing of what the loop is doing."""


def layer_of(frames: list[str]) -> str:
    if frames and frames[-1].startswith(WAITING):
        return IDLE
    for frame in reversed(frames):
        match = FRAME.search(frame)
        if match is None:
            continue
        path = match["file"]
        if any(part in path for part in LOOP_RUN):
            return NATIVE
        for name, parts in LAYERS:
            if any(part in path for part in parts):
                return name
    return OTHER_NATIVE


def thread_group(head: str, loop_tid: int | None) -> str:
    """``event loop`` (the thread ``loop_tid`` or Python's ``MainThread``, where uvicorn runs the
    loop), ``model thread`` (``convzoo-model``), else ``other threads``."""
    match = THREAD.match(head)
    if match is None:
        return "other threads"
    if match["id"].lower() in (str(loop_tid), hex(loop_tid or 0)) or match["name"] == "MainThread":
        return "event loop"
    return "model thread" if (match["name"] or "").startswith("convzoo-model") else "other threads"


def profile_table(raw: Path, loop_tid: int | None = None) -> tuple[dict[str, Counter], Counter]:
    """{thread group: Counter(layer -> samples)} of a ``py-spy record --threads -f raw`` file
    (``thread_group``), and the samples per group."""
    layers: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        group = thread_group(frames[0], loop_tid)
        layers[group][layer_of(frames[1:])] += int(count)
        totals[group] += int(count)
    return layers, totals


def format_profile(raw: Path, loop_tid: int, cpu_ms: dict[str, float]) -> str:
    """The layers' shares of each thread's busy samples, and those shares of the thread's CPU per
    request (``cpu_ms``: group -> ms, from ``/proc``)."""
    layers, _ = profile_table(raw, loop_tid)
    busy = {g: sum(n for layer, n in layers[g].items() if layer != IDLE) or 1 for g in GROUPS}
    total_ms = sum(cpu_ms.values()) or 1
    lines = [
        f"py-spy samples of the worker ({raw.name}, 100 Hz), each thread's busy samples shared out "
        "over its CPU per request (/proc):",
        "",
        "| layer | event loop | model thread | other threads | ms/request | % of the worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {n for g in GROUPS for n in layers[g] if n != IDLE}
    rows = []
    for name in names:
        ms = sum(cpu_ms.get(g, 0) * layers[g][name] / busy[g] for g in GROUPS)
        cells = " | ".join(f"{100 * layers[g][name] / busy[g]:.1f} %" for g in GROUPS)
        rows.append((ms, f"| {name} | {cells} | {ms:.3f} | {100 * ms / total_ms:.1f} % |"))
    lines += [row for _, row in sorted(rows, reverse=True)]
    lines.append(
        "| (CPU per request, /proc) | "
        + " | ".join(f"{cpu_ms.get(g, 0):.3f} ms" for g in GROUPS)
        + f" | {total_ms:.3f} | 100 % |"
    )
    return "\n".join(lines)


def summary(results: dict[tuple[str, str, int], Figures]) -> str:
    lines = [
        "",
        "| variant | route | clients | server CPU ms/request | event loop | model thread | other threads "
        "| model thread, cores | its CPUs idle | images a batch "
        "| requests/s | p50 ms | p99 ms | client cores | load average | requests/s, every round "
        "| server ms, every round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for (name, route, clients), f in results.items():
        m = statistics.median
        batch = f"{m(f.mean_batch):.1f}" if f.mean_batch else "–"
        lines.append(
            f"| {name} | {route} | {clients} | {m(f.server_ms):.3f} | {m(f.loop_ms):.3f} "
            f"| {m(f.model_ms):.3f} | {m(f.other_ms):.3f} | {m(f.model_busy):.2f} "
            f"| {m(f.model_cpus_idle):.2f} | {batch} "
            f"| {m(f.requests_per_s):.1f} | {m(f.p50_ms):.2f} | {m(f.p99_ms):.1f} "
            f"| {m(f.client_cores):.2f} | {min(f.load_average):.2f}–{max(f.load_average):.2f} "
            f"| {', '.join(f'{x:.1f}' for x in f.requests_per_s)} "
            f"| {', '.join(f'{x:.3f}' for x in f.server_ms)} |"
        )
    return "\n".join(lines)


def ratios(results: dict[tuple[str, str, int], Figures], base: str) -> str:
    """Each variant's requests/s over ``base``'s, round by round (the two measured minutes apart
    on the same shared machine: the ratio, not either figure, is what a run says), and the median."""
    lines = []
    for (name, route, clients), f in results.items():
        if name == base or (base, route, clients) not in results:
            continue
        base_figures = results[base, route, clients].requests_per_s
        each = [x / y for x, y in zip(f.requests_per_s, base_figures, strict=True)]
        lines.append(
            f"{name} / {base}, {route}, {clients} clients: requests/s × {statistics.median(each):.3f} "
            f"(rounds: {', '.join(f'{r:.3f}' for r in each)})"
        )
    return "\n".join(lines)


CEILING_BATCH_SIZE = "32"
"""The in-process ceiling's batch: the best of ``benchmarks.load --compare``'s batch sizes on the
photos (``benchmarks.load.COMPARE_CEILING_BATCH_SIZES``), the one it divides every served figure by."""


def ceiling(round_index: int, ref, args) -> float:
    """``benchmarks.load``'s in-process ceiling (``benchmarks.raw``, ``service`` mode: the service's
    decoding and runtime, no HTTP, batch ``CEILING_BATCH_SIZE``) on the CPUs of the model: images/s."""
    options = SimpleNamespace(
        models_dir=args.models_dir,
        ceiling_batch_sizes=CEILING_BATCH_SIZE,
        image_set=args.image_set,
        ceiling_modes="service",
    )
    cpus = ",".join(map(str, sorted(args.model_cpus))) if args.model_cpus else args.server_cpus
    images_per_s = _ceiling(ref, options, cpus, args.out, "auto", suffix=f"r{round_index}")["ceiling"][
        "service_images_per_s"
    ]
    print(f"round {round_index} ceiling: {images_per_s:.1f} images/s", flush=True)
    return images_per_s


def ceiling_ratios(results: dict[tuple[str, str, int], Figures], ceilings: list[float]) -> str:
    """Each variant's requests/s (one photo a request) over the ceiling of its own round."""
    lines = [f"in-process ceiling, images/s, every round: {', '.join(f'{c:.1f}' for c in ceilings)}"]
    for (name, route, clients), f in results.items():
        each = [x / c for x, c in zip(f.requests_per_s, ceilings, strict=True)]
        lines.append(
            f"{name}, {route}, {clients} clients: {statistics.median(each):.3f} of the ceiling "
            f"(rounds: {', '.join(f'{r:.3f}' for r in each)})"
        )
    return "\n".join(lines)


def run_variant(variant: Variant, round_index: int, routes, ref, images, args, results) -> None:
    """One server start of ``variant``: a window per route and client count, its figures added to
    ``results``; its worker's threads pinned apart first when ``--loop-cpus`` covers it."""
    saved = {key: os.environ.get(key) for key in variant.env}
    os.environ.update(variant.env)
    log = args.out / "logs" / f"{variant.name}-r{round_index}.log"
    try:
        with RunningServer(
            SERVERS["bentoml"], ref, args.models_dir, args.server_cpus, log, repo=variant.checkout
        ) as server:
            server.wait_ready()
            warm_up(server.url, images[:40])
            apart = None
            if args.loop_cpus is not None and variant.name in args.apart:
                apart = Apart(server, args.loop_cpus, args.model_cpus)
                for pid in apart.pids:
                    start_model_thread(server, images, pid)
                table, _ = apart.pin()
                print(
                    f"round {round_index} {variant.name}: threads pinned apart\n" + "\n".join(table),
                    flush=True,
                )
            for route in routes:
                for clients in args.clients:
                    profile = None
                    if args.py_spy is not None and round_index == 1:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        profile = args.py_spy / f"{variant.name}-{route}-{clients}.txt"
                    got = measure(server, route, images, args, profile, clients, apart)
                    title = f"round {round_index} {variant.name} {route} {clients} clients"
                    record(results[variant.name, route, clients], got, title)
                    if profile is not None and profile.is_file():
                        cpu = {
                            "event loop": got["loop_ms"],
                            "model thread": got["model_ms"],
                            "other threads": got["other_ms"],
                        }
                        print(format_profile(profile, workers(server.process.pid)[0].pid, cpu), flush=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


FLOOR = "uvicorn floor (trivial app)"


class FloorServer:
    """uvicorn serving ``benchmarks.trivial_app`` (uvloop, httptools), pinned as the variants."""

    def __init__(self, cpus: str | None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "uvicorn", "benchmarks.trivial_app:app", "--port", str(self.port)]
        command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        self.process = subprocess.Popen(
            pin_prefix(cpus) + command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )

    def __enter__(self) -> FloorServer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("the trivial app did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


def run_floor(round_index: int, routes, images, args, results) -> None:
    with FloorServer(args.server_cpus, args.out / "logs" / f"floor-r{round_index}.log") as server:
        for route in routes:
            for clients in args.clients:
                got = measure(server, route, images, args, None, clients)
                record(
                    results[FLOOR, route, clients],
                    got,
                    f"round {round_index} floor {route} {clients} clients",
                )


def record(figures: Figures, got: dict, title: str) -> None:
    for key in ("server_ms", "loop_ms", "model_ms", "other_ms", "requests_per_s", "p50_ms", "p99_ms"):
        getattr(figures, key).append(got[key])
    figures.client_cores.append(got["client_cores"])
    figures.load_average.append(got["load_average"])
    figures.model_busy.append(got["model_busy"])
    figures.model_cpus_idle.append(got["model_cpus_idle"])
    if got["mean_batch"] is not None:
        figures.mean_batch.append(got["mean_batch"])
    print(
        f"{title}: server {got['server_ms']:.3f} ms/request (loop {got['loop_ms']:.3f}, model thread "
        f"{got['model_ms']:.3f}, other {got['other_ms']:.3f}), {got['requests_per_s']:.1f} requests/s, "
        f"p50 {got['p50_ms']:.2f} ms, p99 {got['p99_ms']:.1f} ms, client {got['client_cores']:.2f} cores, "
        f"model thread {got['model_busy']:.2f} of a core, its CPUs idle {got['model_cpus_idle']:.2f}, "
        + (f"{got['mean_batch']:.1f} images a batch, " if got["mean_batch"] is not None else "")
        + f"load average {got['load_average']:.2f}, {got['failures']} failures {got['first_failure'][:60]}\n"
        f"  the worker's threads that ran (CPU per request): {'; '.join(got['threads'])}"
        + (
            f"\n  pinned again as the window started: {'; '.join(got['repinned'])}" if got["repinned"] else ""
        ),
        flush=True,
    )


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
    parser.add_argument("--clients", default="32", help="comma-separated: a window each (32,64)")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument(
        "--loop-cpus",
        help="after start, pin the worker's event loop and every thread but the model's here "
        "(with --model-cpus; the server starts on --server-cpus, its settings follow from those)",
    )
    parser.add_argument("--model-cpus", help="after start, pin the model's thread (convzoo-model) here")
    parser.add_argument(
        "--apart", help="comma-separated: the variants whose threads are pinned apart (default: every one)"
    )
    parser.add_argument(
        "--ceiling", action="store_true", help="each round, the in-process ceiling too (on --model-cpus)"
    )
    parser.add_argument(
        "--alternate", action="store_true", help="the variants in reverse order every other round"
    )
    parser.add_argument("--py-spy", type=Path, default=None, help="profile the first round into DIR")
    parser.add_argument("--floor", action="store_true", help="also measure uvicorn with a trivial app")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "http_served")
    args = parser.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    args.clients = [int(c) for c in args.clients.split(",") if c]
    if (args.loop_cpus is None) != (args.model_cpus is None):
        parser.error("--loop-cpus and --model-cpus go together")
    if args.loop_cpus is not None:
        args.loop_cpus, args.model_cpus = set(parse_cpus(args.loop_cpus)), set(parse_cpus(args.model_cpus))
        if args.server_cpus and not args.model_cpus <= set(parse_cpus(args.server_cpus)):
            parser.error(
                "--model-cpus: among --server-cpus (OpenVINO keeps the model on the CPUs it was compiled on)"
            )
    if not set(routes) <= set(ROUTES):
        parser.error(f"--routes: choose from {', '.join(ROUTES)}")
    try:
        variants = [Variant.parse(text) for text in args.variants]
    except ValueError as error:
        parser.error(str(error))
    names = [v.name for v in variants]
    args.apart = names if args.apart is None else [n for n in args.apart.split(",") if n]
    if not set(args.apart) <= set(names):
        parser.error(f"--apart: no variant named {', '.join(sorted(set(args.apart) - set(names)))}")
    ref = resolve(args.model, args.models_dir)
    images = list(image_set(args.image_set).paths)
    results = {(v.name, r, c): Figures() for v in variants for r in routes for c in args.clients}
    if args.floor:
        results.update({(FLOOR, r, c): Figures() for r in routes for c in args.clients})
    ceilings = []
    for round_index in range(1, args.rounds + 1):
        if args.ceiling:
            ceilings.append(ceiling(round_index, ref, args))
        turn = variants[::-1] if args.alternate and round_index % 2 == 0 else variants
        for variant in turn:
            run_variant(variant, round_index, routes, ref, images, args, results)
        if args.floor:
            run_floor(round_index, routes, images, args, results)
    print(summary(results))
    if len(names) > 1:
        print(ratios(results, names[0]))
    if ceilings:
        print(ceiling_ratios(results, ceilings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
