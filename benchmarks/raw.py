"""The ceiling: the exported model measured in-process, with no server in between.

    python -m benchmarks.raw --model imagenette            # latest version, CPU 1, all modes
    python -m benchmarks.raw --model imagenette --runtime tensorflow    # or openvino-int8, ...
    python -m benchmarks.raw --model resnet50:2 --batch-sizes 1,8,32 --cpus 0,1 --json out.json

The model runs on the runtime ``--runtime`` names (``service.runtimes``; ``auto``, the default, is
what the service would pick on this CPU: the fastest OpenVINO form that passed its accuracy gate),
loaded and warmed up at every batch size exactly as the service does.

For each batch size (1, 2, 4 ... 64) and each mode: ``--warmup`` untimed runs, then ``--repeats``
timed runs; one run classifies the whole image set (``--image-set``) in batches of that size.
Reported: the median over runs of images/s, and the p50/p95 latency of one batch call. Modes:

- ``tensor``: uint8 images already decoded and resized to the model's input size, through the
  runtime (the model alone: the upper bound no server can pass);
- ``bytes``: the JPEG bytes through the SavedModel's ``serve_bytes`` signature (decode + resize
  in-graph; TensorFlow only);
- ``pil``: the JPEG bytes decoded and resized with PIL here, then the runtime (what the peer
  servers do per request);
- ``service``: the JPEG bytes through the service's own ``service.serving.images.prepare_image``
  (libjpeg-turbo at reduced scale, crop, PIL resize), then the runtime: what the service computes
  per image, without HTTP, and what every peer of ``benchmarks.load --compare`` computes too (they
  import the same decoding): the ceiling of the same work (``service_images_per_s`` in the
  summary, its best batch size), which ``--compare`` divides every server's best by.

``bytes``, ``pil`` and ``service`` are end-to-end (JPEG bytes in, probabilities out) with the
exported model's own decoding, the usual PIL one or the service's; the end-to-end ceiling of the
issue-22 targets is the best of them at its best batch size. Batches cycle through
the benchmark's image set (``benchmarks.images``), so every batch holds a mix of sizes.

``--cpus`` pins this process (and TensorFlow's thread pools, sized from the affinity) to the
given CPUs before TensorFlow is imported; the load runner uses the same CPUs for every server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.images import add_image_set_argument, image_set
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, read_metadata, resolve
from benchmarks.peers.common import decode
from service import runtimes

MODES = ("tensor", "bytes", "pil", "service")
END_TO_END = ("bytes", "pil", "service")
"""The modes that do a request's whole work in process (decode, resize, the model): the ceiling is
the best of them; ``service`` decodes as the service does (JPEGs at reduced DCT scale), so a 12 MP
photo's ceiling is not a full-size decode the service never does."""
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Point:
    """One (mode, batch size): batch latency percentiles and the median throughput of the runs."""

    mode: str
    batch_size: int
    runs: int
    p50_ms: float
    p95_ms: float
    images_per_s: float


def parse_cpus(text: str) -> list[int]:
    """``"1"`` or ``"0,1"`` or ``"0-1"`` (taskset's list syntax) to a list of CPU ids."""
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def pin(cpus: list[int]) -> None:
    available = os.sched_getaffinity(0)
    if not set(cpus) <= available:
        raise SystemExit(f"--cpus {cpus} not all available to this process (has {sorted(available)})")
    os.sched_setaffinity(0, cpus)


def measure(call, batch_size: int, image_count: int, warmup: int, repeats: int, max_seconds: float) -> Point:
    """Time runs of ``call(step)`` (batch number ``step``); one run covers the whole image set.

    ``warmup`` runs are untimed; then up to ``repeats`` timed runs, stopping early once
    ``max_seconds`` have been spent (at least 3 runs always, so a median means something).
    Throughput is the median over runs of images/s; latency is over all timed batches.
    """
    batches_per_run = math.ceil(max(image_count, batch_size) / batch_size)
    step = 0

    def one_run() -> list[float]:
        nonlocal step
        durations = []
        for _ in range(batches_per_run):
            start = time.perf_counter()
            call(step)
            durations.append(time.perf_counter() - start)
            step += 1
        return durations

    for _ in range(warmup):
        one_run()
    runs: list[list[float]] = []
    while len(runs) < repeats:
        runs.append(one_run())
        if len(runs) >= 3 and sum(map(sum, runs)) > max_seconds:
            break
    latencies = sorted(d for run in runs for d in run)
    rates = [batch_size * len(run) / sum(run) for run in runs]
    return Point(
        mode="",
        batch_size=batch_size,
        runs=len(runs),
        p50_ms=statistics.median(latencies) * 1e3,
        p95_ms=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3,
        images_per_s=statistics.median(rates),
    )


def make_calls(predict, serve_bytes, images: list[bytes], size: tuple[int, int], metadata: dict) -> dict:
    """One function per mode: ``call(step)`` classifies batch number ``step`` (of ``batch_size``).

    ``predict``: the runtime's numpy function (``service.runtimes.load``), uint8 images at the
    model's input size -> probabilities; ``serve_bytes``: the SavedModel's bytes signature, or None
    (a runtime other than TensorFlow has no in-graph decoding: no ``bytes`` mode)."""
    decoded = np.stack([decode(data, size) for data in images])
    count = len(images)

    def indices(step: int, batch_size: int) -> list[int]:
        return [(step * batch_size + i) % count for i in range(batch_size)]

    def distinct(batch_size: int) -> int:
        """Batch ``step`` repeats with this period, so only that many are prepared."""
        return count // math.gcd(batch_size, count)

    def tensor_mode(batch_size: int):
        period = distinct(batch_size)
        batches = [np.ascontiguousarray(decoded[indices(step, batch_size)]) for step in range(period)]
        return lambda step: predict(batches[step % period])

    def bytes_mode(batch_size: int):
        import tensorflow as tf

        period = distinct(batch_size)
        batches = [tf.constant([images[i] for i in indices(step, batch_size)]) for step in range(period)]
        return lambda step: serve_bytes(image_bytes=batches[step % period])["probabilities"].numpy()

    def decoding_mode(prepare):
        """Decode every image of the batch here with ``prepare(bytes)``, then the model."""

        def mode(batch_size: int):
            def call(step: int):
                return predict(np.stack([prepare(images[i]) for i in indices(step, batch_size)]))

            return call

        return mode

    from service.serving.images import Resize, prepare_image

    resize = Resize.from_metadata(metadata)
    calls = {
        "tensor": tensor_mode,
        "pil": decoding_mode(lambda data: decode(data, size)),
        "service": decoding_mode(lambda data: prepare_image(data, "benchmark.jpg", resize)),
    }
    if serve_bytes is not None:
        calls["bytes"] = bytes_mode
    return calls


def ceiling_summary(points: list[Point]) -> dict:
    """The figures the load report compares against (end-to-end best, batch-1 latency, model alone)."""
    e2e = [p for p in points if p.mode in END_TO_END]
    tensor = [p for p in points if p.mode == "tensor"]
    summary: dict = {}
    if e2e:
        best = max(e2e, key=lambda p: p.images_per_s)
        summary.update(e2e_images_per_s=best.images_per_s, e2e_mode=best.mode, e2e_batch_size=best.batch_size)
        single = [p for p in e2e if p.batch_size == 1]
        if single:
            fastest = min(single, key=lambda p: p.p50_ms)
            summary.update(e2e_p50_ms_batch1=fastest.p50_ms, e2e_batch1_mode=fastest.mode)
    if tensor:
        summary["tensor_images_per_s"] = max(p.images_per_s for p in tensor)
    service = [p for p in points if p.mode == "service"]
    if service:
        best = max(service, key=lambda p: p.images_per_s)
        summary.update(service_images_per_s=best.images_per_s, service_batch_size=best.batch_size)
    return summary


def markdown_table(points: list[Point]) -> str:
    lines = [
        "| mode | batch | runs | batch p50 ms | batch p95 ms | images/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p.mode} | {p.batch_size} | {p.runs} | {p.p50_ms:.1f} | {p.p95_ms:.1f} | {p.images_per_s:.1f} |"
        for p in points
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="NAME or NAME:VERSION (default: %(default)s)")
    add_image_set_argument(parser)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, DEFAULT_BATCH_SIZES)),
        help="comma-separated (default: %(default)s)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="of %(default)s")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=runtimes.CHOICES,
        help="as CONVZOO_RUNTIME: auto is what the service picks on this CPU",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per point (a run covers the whole image set)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="stop a point's timed runs after this long (at least 3 run)",
    )
    parser.add_argument("--cpus", default="1", help="pin to these CPUs, taskset syntax; 'none' to not pin")
    parser.add_argument("--json", type=Path, help="also write the results here")


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    cpus = None if args.cpus == "none" else parse_cpus(args.cpus)
    if cpus is not None:
        pin(cpus)
    ref = resolve(args.model, args.models_dir)
    metadata = read_metadata(ref)
    size = tuple(metadata["input_size"])
    images_used = image_set(args.image_set)
    images = images_used.read_all()
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {MODES}")

    choice = runtimes.choose(args.runtime, metadata, ref.path)  # as the service on this CPU
    predict = runtimes.load(choice, ref.path)  # after pinning: thread pools sized from it
    # TensorFlow: the same loaded SavedModel also has the bytes signature (no second load)
    serve_bytes = predict.saved_model.signatures["serve_bytes"] if choice.runtime == "tensorflow" else None
    runtimes.warm_up(predict, size, max(int(b) for b in args.batch_sizes.split(",")))
    calls = make_calls(predict, serve_bytes, images, size, metadata)
    print(
        f"model {ref.spec} ({metadata.get('architecture')}, input {size[0]}x{size[1]}) on "
        f"{choice.runtime} {choice.precision} ({choice.key}), CPUs {sorted(os.sched_getaffinity(0))}; "
        f"images: {images_used.description}",
        flush=True,
    )
    points = []
    for mode in modes:
        if mode not in calls:
            print(f"skipping mode {mode!r}: only TensorFlow runs the SavedModel's serve_bytes", flush=True)
            continue
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            point = measure(
                calls[mode](batch_size), batch_size, len(images), args.warmup, args.repeats, args.max_seconds
            )
            points.append(p := replace(point, mode=mode))
            print(
                f"  {mode:7s} batch {batch_size:3d}: p50 {p.p50_ms:8.1f} ms, "
                f"{p.images_per_s:7.1f} images/s ({p.runs} runs)",
                flush=True,
            )
    return {
        "model": ref.spec,
        "architecture": metadata.get("architecture"),
        "input_size": list(size),
        "runtime": runtimes.describe(choice),
        "cpus": sorted(os.sched_getaffinity(0)),
        "images": images_used.description,
        "command": shlex.join([sys.executable, "-m", "benchmarks.raw", *argv]),
        "points": [asdict(p) for p in points],
        "ceiling": ceiling_summary(points),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.raw",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        result = run(args, argv)
    except (FileNotFoundError, runtimes.RuntimeUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown_table([Point(**p) for p in result["points"]]))
    print(json.dumps(result["ceiling"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
