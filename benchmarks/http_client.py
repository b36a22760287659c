"""A lean closed-loop HTTP load generator: N clients on keep-alive connections, prepared requests.

    python -m benchmarks.http_client --url http://127.0.0.1:3000 --route v2 --clients 32 \\
        --warmup 3 --seconds 10 IMAGE...

Standard library only (asyncio streams), so its own CPU stays small beside the server's: every
request's bytes (request line, headers, body) are built once at start, each client writes one and
reads the answer (``Content-Length`` framing), back to back. Two routes, one photo a request:

- ``v2``: ``POST /v2/models/<model>/infer`` in the Open Inference Protocol's binary data extension,
  the JPEG as one ``BYTES`` element of ``image_bytes`` and the output asked in binary, byte for
  byte the JSON header ``tritonclient.http`` writes with ``binary_data=True`` (its
  ``json.dumps`` separators, ``Inference-Header-Content-Length``);
- ``classify``: ``POST /classify``, one multipart part ``images`` (``benchmarks.multipart``).

An answer counts when its status is 200 and its body has the route's shape (the binary output's
FP32 probabilities after the header, as many bytes as it says; a ``label`` in the JSON). Prints
``START`` and ``END`` (flushed) around the measured window, then one JSON line: requests,
failures, requests/s, p50/p99 ms, and this process's CPU seconds in the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.multipart import encode_multipart

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
HEADER_LENGTH = re.compile(rb"\r\ninference-header-content-length:\s*(\d+)", re.IGNORECASE)
BINARY_SIZE = re.compile(rb'"binary_data_size":\s*(\d+)')


def v2_body(data: bytes) -> tuple[bytes, int]:
    """The binary-extension body of one JPEG, and its JSON header's length (as tritonclient sends)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data) + 4},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + len(data).to_bytes(4, "little") + data, len(header)


def build_request(route: str, host: str, data: bytes, filename: str, model: str) -> bytes:
    """The whole HTTP/1.1 request (head and body) for one image."""
    if route == "v2":
        body, header_length = v2_body(data)
        path = f"/v2/models/{model}/infer"
        extra = (
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {header_length}\r\n"
        )
    else:
        body, content_type = encode_multipart([(filename, data)])
        path = "/classify"
        extra = f"Content-Type: {content_type}\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: convzoo-http-client\r\n"
        f"Accept: */*\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def answer_ok(route: str, head: bytes, body: bytes) -> bool:
    if not head.startswith(b"HTTP/1.1 200"):
        return False
    if route == "v2":
        match = HEADER_LENGTH.search(head)
        if match is None:
            return False
        size = BINARY_SIZE.search(body, 0, int(match[1]))
        raw = len(body) - int(match[1])
        return size is not None and int(size[1]) == raw and raw > 0 and raw % 4 == 0  # FP32 probabilities
    return b'"label"' in body


class Results:
    def __init__(self) -> None:
        self.measuring = False
        self.times: list[float] = []
        self.failures = 0
        self.first_failure = ""


async def one_client(
    host: str,
    port: int,
    route: str,
    requests: list[bytes],
    offset: int,
    stop: asyncio.Event,
    results: Results,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while not stop.is_set():
            request = requests[index % len(requests)]
            index += 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = CONTENT_LENGTH.search(head)
            if match is None:
                raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
            body = await reader.readexactly(int(match[1]))
            elapsed = time.perf_counter() - started
            if not results.measuring:
                continue
            if answer_ok(route, head, body):
                results.times.append(elapsed)
            else:
                results.failures += 1
                results.first_failure = results.first_failure or (head[:40] + body[:200]).decode("latin-1")
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    files = [Path(p) for p in args.images]
    requests = [
        build_request(args.route, f"{host}:{port}", f.read_bytes(), f.name, args.model) for f in files
    ]
    stop = asyncio.Event()
    results = Results()
    tasks = [
        asyncio.create_task(one_client(host, port, args.route, requests, i * 7, stop, results))
        for i in range(args.clients)
    ]
    await asyncio.sleep(args.warmup)
    results.measuring = True
    print("START", flush=True)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(args.seconds)
    results.measuring = False
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print("END", flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    times = sorted(results.times)
    if not times:
        return {"requests": 0, "failures": results.failures, "first_failure": results.first_failure}
    return {
        "requests": len(times),
        "failures": results.failures,
        "first_failure": results.first_failure,
        "seconds": wall,
        "requests_per_s": len(times) / wall,
        "p50_ms": 1e3 * statistics.median(times),
        "p99_ms": 1e3 * times[min(len(times) - 1, round(0.99 * len(times)) - 1)],
        "client_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--route", choices=("v2", "classify"), default="v2")
    parser.add_argument("--model", default=os.environ.get("CONVZOO_BENCH_MODEL", "imagenette"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the server's loop, when installed: less of the client's CPU

        runner = uvloop.run
    except (ImportError, AttributeError):
        runner = asyncio.run
    print(json.dumps(runner(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
