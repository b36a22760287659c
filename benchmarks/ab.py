"""A/B test of server settings: interleaved rounds, images/s and the server's CPU per request.

    python -m benchmarks.ab threads:CONVZOO_DECODE_THREADS=4 inline:CONVZOO_DECODE_THREADS=0
    python -m benchmarks.ab base: nospans:OTEL_SDK_DISABLED=true --rounds 4 --users 32
    python -m benchmarks.ab before@/tmp/old-checkout: after:          # two checkouts of the code

Each variant is ``NAME[@CHECKOUT]:[VAR=VALUE[,VAR=VALUE...]]``: environment variables for the
server, and optionally another checkout of this repository to serve from (``git worktree add``).
Every round starts each variant's server in turn (``taskset -c 1``, Locust on CPU 0, as in
``benchmarks.load``), warms it up, and runs ``--steps`` Locust steps at ``--users``; the summary
gives each variant's median images/s and the server's CPU milliseconds per request (all its
processes, ``user + system``, read before and after each step, Locust's ramp-up included).

This is how the rows of benchmarks/README.md "What we tried" are measured: on a shared machine
throughput drifts within minutes (by how much: that file's notes), so only variants run in the
same rounds are compared, and CPU per request is the steadier of the two figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.images import add_image_set_argument, image_set
from benchmarks.ladder import run_step
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, resolve
from benchmarks.servers import SERVERS, RunningServer, warm_up

WARMUP_SECONDS = 4


@dataclass
class Variant:
    name: str
    checkout: Path
    env: dict[str, str]
    images_per_s: list[float] = field(default_factory=list)
    cpu_ms_per_request: list[float] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, sep, settings = text.partition(":")
        name, _, checkout = head.partition("@")
        if not sep or not name:
            raise ValueError(f"variant {text!r}: expected NAME[@CHECKOUT]:[VAR=VALUE,...]")
        env = {}
        for item in filter(None, settings.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"variant {text!r}: {item!r} is not VAR=VALUE")
            env[key] = value
        path = Path(checkout).resolve() if checkout else REPO
        if not (path / "bentofile.yaml").is_file():
            raise ValueError(f"variant {text!r}: {path} is not a checkout of this repository")
        return cls(name, path, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("variants", nargs="+", help="NAME[@CHECKOUT]:[VAR=VALUE,...]")
    parser.add_argument("--server", choices=sorted(SERVERS), default="bentoml")
    parser.add_argument("--model", default=os.environ.get("CONVZOO_MODEL") or DEFAULT_MODEL)
    add_image_set_argument(parser)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="measured steps per server start")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="per step")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--locust-cpus", default="0")
    parser.add_argument("--no-pin", action="store_true", help="run everything without taskset")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ab")
    args = parser.parse_args(argv)
    if args.no_pin:
        args.server_cpus = args.locust_cpus = None
    try:
        variants = [Variant.parse(text) for text in args.variants]
    except ValueError as error:
        parser.error(str(error))
    if len({v.name for v in variants}) != len(variants):
        parser.error("variant names must differ")
    ref = resolve(args.model, args.models_dir)
    images = list(image_set(args.image_set).paths)
    for round_index in range(1, args.rounds + 1):
        for variant in variants:
            measure(variant, round_index, ref, args, images)
    print(summary(variants))
    return 0


def measure(variant: Variant, round_index: int, ref, args, images: list[Path]) -> None:
    """One server start of ``variant``: warm-up, then ``args.steps`` measured steps."""
    saved = {key: os.environ.get(key) for key in variant.env}
    os.environ.update(variant.env)
    log = args.out / "logs" / f"{variant.name}-r{round_index}.log"
    try:
        with RunningServer(
            SERVERS[args.server], ref, args.models_dir, args.server_cpus, log, repo=variant.checkout
        ) as server:
            server.wait_ready()
            warm_up(server.url, images)
            run_step(
                args.server,
                server.url,
                args.users,
                WARMUP_SECONDS,
                images,
                1,
                args.out / "locust" / f"{variant.name}-r{round_index}-warmup",
                args.locust_cpus,
            )
            for step_index in range(1, args.steps + 1):
                before = cpu_seconds(server.process.pid)
                step = run_step(
                    args.server,
                    server.url,
                    args.users,
                    args.seconds,
                    images,
                    1,
                    args.out / "locust" / f"{variant.name}-r{round_index}-s{step_index}",
                    args.locust_cpus,
                )
                cpu_ms = 1000 * (cpu_seconds(server.process.pid) - before) / max(step.requests, 1)
                variant.images_per_s.append(step.images_per_s)
                variant.cpu_ms_per_request.append(cpu_ms)
                print(
                    f"round {round_index} {variant.name:>12}: {step.images_per_s:6.1f} images/s, "
                    f"server CPU {cpu_ms:5.2f} ms/request, p50 {step.p50_ms:.0f} ms, "
                    f"p99 {step.p99_ms:.0f} ms, {step.failures} failures",
                    flush=True,
                )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and all its children, so far."""
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def summary(variants: list[Variant]) -> str:
    first = variants[0]
    base = statistics.median(first.images_per_s)
    lines = [
        "",
        "| variant | images/s (median) | vs first | server CPU ms/request (median) | all images/s |",
        "|---|---:|---:|---:|---|",
    ]
    for variant in variants:
        median = statistics.median(variant.images_per_s)
        lines.append(
            f"| {variant.name} | {median:.1f} | {median / base:.3f} | "
            f"{statistics.median(variant.cpu_ms_per_request):.2f} | "
            f"{', '.join(f'{x:.1f}' for x in variant.images_per_s)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
