"""Load-test the service (and its peers) over a ladder of concurrent users; write a report.

    python -m benchmarks.load                      # the BentoML service, started here
    python -m benchmarks.load --compare            # + the service on TensorFlow, FastAPI and Ray
                                                   #   Serve peers, and the ceilings
    python -m benchmarks.load --host http://127.0.0.1:3000   # a server that is already running
    python -m benchmarks.load --servers fastapi --users 1,4 --step-seconds 5 --no-ceiling

For each server: start it (``taskset -c SERVER_CPUS``), wait for ``/readyz``, check with
``/metadata`` that it serves the requested export, warm it up (every image once, then a short
untimed run at the top of the ladder), then one headless Locust run per step of the ladder
(``taskset -c LOCUST_CPUS``, fixed time per step, closed loop), and stop it. The in-process
ceilings (``benchmarks.raw``) run alone, on the server CPUs: one per runtime that a measured
server uses (the service's default runtime, ``auto``: OpenVINO int8 for the default model;
TensorFlow for ``bentoml-tf`` and the peers), each just before the first server that runs on it
(and the 12 MP one just after the service's 12 MP step), and each server is judged against its
own runtime's ceiling. Servers run one after the other, never together, on the same images and the
same ladder.

Output in ``benchmarks/results/<timestamp>/`` (or ``--out``): ``steps.csv``, ``ceiling.csv`` and
``ceiling-<runtime>.json``, ``report.md`` (header, targets, a table per server, the ceilings),
``plot.png``, plus ``locust/`` (Locust's own CSVs and logs per step) and ``logs/`` (servers).
``--docs docs`` also writes the report and its plot as the repository's ``docs/performance.md`` and
``docs/performance.png`` (the README links them): the last row of benchmarks/README.md's log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from benchmarks.images import add_image_set_argument, image_set
from benchmarks.ladder import LocustError, Step, run_step
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, ModelRef, read_metadata, resolve
from benchmarks.report import (
    accuracy_targets,
    evaluate_targets,
    plot,
    write_ceiling_csv,
    write_markdown,
    write_steps_csv,
)
from benchmarks.servers import SERVERS, RunningServer, ServerError, check_metadata, pin_prefix, warm_up
from service import runtimes
from service.config import cpu_count

RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_USERS = "1,2,4,8,16,32,64"
COMPARE_SERVERS = ("bentoml", "bentoml-tf", "fastapi", "ray")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="NAME or NAME:VERSION in --models-dir (default: %(default)s, latest)",
    )
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--compare",
        action="store_true",
        help=f"measure {', '.join(COMPARE_SERVERS)} and the ceiling in one run",
    )
    target.add_argument(
        "--servers",
        default="bentoml",
        help=f"comma-separated, of {', '.join(SERVERS)} (default: %(default)s)",
    )
    target.add_argument("--host", help="measure the server already running at this URL instead")
    parser.add_argument("--users", default=DEFAULT_USERS, help="the ladder (default: %(default)s)")
    parser.add_argument("--step-seconds", type=float, default=20, help="Locust run time per step")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=5,
        help="untimed Locust run at the top of the ladder before it (0: none)",
    )
    parser.add_argument("--images-per-request", type=int, default=1)
    add_image_set_argument(parser)
    parser.add_argument(
        "--server-cpus",
        default="1",
        help="taskset CPU list for servers and the ceiling (default: %(default)s)",
    )
    parser.add_argument(
        "--locust-cpus", default="0", help="taskset CPU list for Locust (default: %(default)s)"
    )
    parser.add_argument("--no-pin", action="store_true", help="run everything without taskset")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling")
    parser.add_argument("--ceiling-batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--no-large-photo",
        action="store_true",
        help="skip the one-client step with 12 MP phone JPEGs (and its in-process ceiling)",
    )
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<time>)")
    parser.add_argument(
        "--docs",
        type=Path,
        metavar="DIR",
        help="also write the report and plot as DIR/performance.md and DIR/performance.png (docs)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        return run(args, argv)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, argv: list[str]) -> int:
    users = [int(u) for u in args.users.split(",")]
    server_cpus, locust_cpus = (None, None) if args.no_pin else (args.server_cpus, args.locust_cpus)
    servers = _servers(args)
    ref = None if args.host and args.no_ceiling else resolve(args.model, args.models_dir)
    out = args.out or RESULTS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    images_used = image_set(args.image_set)
    images = list(images_used.paths)
    command = shlex.join(["python", "-m", "benchmarks.load", *argv])
    header = _header(ref, args, images_used.description, server_cpus, locust_cpus, users, command)
    print("\n".join(header), f"\nresults: {out}", sep="\n", flush=True)

    # Each runtime's ceiling is measured just before the first server that runs on it, and the
    # 12 MP ceiling just after the service's own 12 MP step: the machine's speed drifts within
    # minutes, so each ratio compares figures taken as close together as possible.
    ceilings: dict[str, dict] = {}
    by_server: dict[str, list[Step]] = {}
    problems: dict[str, str] = {}
    subject = "bentoml" if "bentoml" in servers else servers[0]
    large_ceiling = None
    for name in servers:
        runtime = _runtime(name)
        if not args.no_ceiling and runtime not in ceilings:
            ceilings[runtime] = _ceiling(ref, args, server_cpus, out, runtime)
        try:
            by_server[name] = _measure(name, ref, args, images, users, server_cpus, locust_cpus, out)
        except (ServerError, LocustError, subprocess.TimeoutExpired) as error:
            problems[name] = str(error).splitlines()[0]
            print(f"[{name}] NOT MEASURED: {error}", flush=True)
            continue
        if name == subject and LARGE_PHOTO_STEPS.get(name) is not None and runtime in ceilings:
            large_ceiling = _ceiling(ref, args, server_cpus, out, runtime, images="phone")["ceiling"]

    if subject not in by_server:
        subject = next(iter(by_server), servers[0])
    ceiling = ceilings.get(_runtime(subject))
    large = LARGE_PHOTO_STEPS.get(subject)
    targets = evaluate_targets(subject, by_server, ceiling and ceiling["ceiling"], large, large_ceiling)
    all_steps = [s for steps in by_server.values() for s in steps]
    if all_steps:
        write_steps_csv(out / "steps.csv", all_steps)
    if ceilings:
        write_ceiling_csv(
            out / "ceiling.csv",
            [
                {"runtime": runtime, **point}
                for runtime, found in ceilings.items()
                for point in found["points"]
            ],
        )
    if ref is not None and ceiling:
        targets += accuracy_targets(read_metadata(ref), ceiling["runtime"]["key"])
    titles = {name: SERVERS[name].title if name in SERVERS else name for name in servers}
    header.append(f"Load average at the end: {_load_average()}")
    write_markdown(
        out / "report.md",
        header=header,
        titles=titles,
        subject=subject,
        by_server=by_server,
        ceilings=ceilings,
        targets=targets,
        problems=problems,
    )
    plot(
        out / "plot.png",
        by_server,
        {runtime: found["ceiling"] for runtime, found in ceilings.items()},
        f"{ref.spec if ref else args.host}, {cpu_count()} CPUs, {args.images_per_request} image(s)/request",
    )
    print(f"\nTargets (service under test: {subject}):")
    if not targets:
        print("  none could be evaluated (they need the ceiling and measured steps)")
    for target in targets:
        print(
            f"  {'pass' if target.passed else 'FAIL'}  {target.name}: {target.measured} (goal {target.goal})"
        )
    print(f"\nreport: {out / 'report.md'}\nplot:   {out / 'plot.png'}")
    if args.docs:
        print("published: " + ", ".join(str(path) for path in publish(out, args.docs)))
    return 0 if all_steps else 1


def publish(out: Path, docs: Path) -> list[Path]:
    """``out``'s ``report.md`` and ``plot.png`` as ``docs/performance.md`` and ``performance.png``,
    the report's link to its plot renamed with it."""
    docs.mkdir(parents=True, exist_ok=True)
    report, plot_path = docs / "performance.md", docs / "performance.png"
    report.write_text((out / "report.md").read_text().replace("](plot.png)", f"]({plot_path.name})"))
    shutil.copyfile(out / "plot.png", plot_path)
    return [report, plot_path]


def _servers(args: argparse.Namespace) -> list[str]:
    if args.host:
        return [args.host]
    names = list(COMPARE_SERVERS) if args.compare else [s.strip() for s in args.servers.split(",")]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise ValueError(f"unknown servers {unknown}; choose from {list(SERVERS)}")
    return names


def _measure(
    name: str,
    ref: ModelRef | None,
    args,
    images: list[Path],
    users: list[int],
    server_cpus: str | None,
    locust_cpus: str | None,
    out: Path,
) -> list[Step]:
    """All steps of the ladder against one server (started and stopped here unless --host)."""
    if args.host:
        check_metadata(args.host, ref)
        return _ladder(name, args.host, args, images, users, locust_cpus, out)
    spec = SERVERS[name]
    print(f"[{name}] starting: {spec.title}", flush=True)
    with RunningServer(spec, ref, args.models_dir, server_cpus, out / "logs" / f"{name}.log") as server:
        print(f"[{name}] {shlex.join(server.argv)}", flush=True)
        print(f"[{name}] ready after {server.wait_ready():.1f} s on {server.url}", flush=True)
        check_metadata(server.url, ref)
        return _ladder(name, server.url, args, images, users, locust_cpus, out)


def _ladder(
    name: str, url: str, args, images: list[Path], users: list[int], locust_cpus: str | None, out: Path
) -> list[Step]:
    warm_up(url, images)
    label = name if name in SERVERS else "host"
    if args.warmup_seconds > 0:
        print(f"[{name}] warm-up: {max(users)} users for {args.warmup_seconds:g} s", flush=True)
        run_step(
            name,
            url,
            max(users),
            args.warmup_seconds,
            images,
            args.images_per_request,
            out / "locust" / f"{label}-warmup",
            locust_cpus,
        )
    steps = []
    for index, count in enumerate(users, 1):
        print(
            f"[{name}] step {index}/{len(users)}: {count} users for {args.step_seconds:g} s ...",
            end="",
            flush=True,
        )
        step = run_step(
            name,
            url,
            count,
            args.step_seconds,
            images,
            args.images_per_request,
            out / "locust" / f"{label}-u{count}",
            locust_cpus,
        )
        steps.append(step)
        print(
            f" {step.images_per_s:.1f} images/s, p50 {step.p50_ms:.0f} ms, p99 {step.p99_ms:.0f} ms, "
            f"{step.failures} failures of {step.requests}",
            flush=True,
        )
    if (name == "bentoml" or name not in SERVERS) and not args.no_large_photo:  # the service, or --host
        phone = list(image_set("phone").paths)
        warm_up(url, phone[:2])
        step = run_step(
            f"{name} (12 MP)",
            url,
            1,
            args.step_seconds,
            phone,
            1,
            out / "locust" / f"{label}-phone-u1",
            locust_cpus,
        )
        LARGE_PHOTO_STEPS[name] = step
        print(f"[{name}] one client, 12 MP phone JPEGs: p50 {step.p50_ms:.1f} ms", flush=True)
    return steps


LARGE_PHOTO_STEPS: dict[str, Step] = {}
"""The one-client step with 12 MP phone JPEGs, by server (the BentoML service or --host only)."""


def _runtime(server: str) -> str:
    """The runtime of a server in this run (an already running ``--host``: the service's default)."""
    return SERVERS[server].model_runtime() if server in SERVERS else SERVERS["bentoml"].model_runtime()


def _ceiling(
    ref: ModelRef, args, server_cpus: str | None, out: Path, runtime: str, images: str | None = None
) -> dict:
    """Run ``benchmarks.raw`` on ``runtime`` in its own process on the server CPUs; its JSON.
    ``images``: another image set than the run's, at batch 1 only (the large-photo check)."""
    result_path = out / (f"ceiling-{runtime}.json" if images is None else f"ceiling-{runtime}-{images}.json")
    argv = pin_prefix(server_cpus) + [
        sys.executable,
        "-m",
        "benchmarks.raw",
        "--model",
        ref.spec,
        "--runtime",
        runtime,
        "--models-dir",
        str(args.models_dir),
        "--batch-sizes",
        args.ceiling_batch_sizes if images is None else "1",
        "--image-set",
        images or args.image_set,  # the very images the servers get
        "--cpus",
        "none",
        "--json",
        str(result_path),
    ]
    print(f"[ceiling {runtime}] {shlex.join(argv)}", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(argv, cwd=REPO, env=env, check=True)
    return json.loads(result_path.read_text())


def _header(ref: ModelRef | None, args, images: str, server_cpus, locust_cpus, users, command) -> list[str]:
    if ref is not None:
        metadata = read_metadata(ref)
        model = (
            f"Model: {ref.spec} from {args.models_dir} ({metadata.get('architecture')}, "
            f"input {'x'.join(map(str, metadata['input_size']))}, "
            f"{metadata.get('params', 0):,} parameters)"
        )
    else:
        model = f"Model: whatever {args.host} serves"
    pinning = (
        f"Pinning: servers and the in-process ceiling on CPU {server_cpus} "
        f"(`taskset -c {server_cpus}`, inherited by their worker processes), Locust on "
        f"CPU {locust_cpus} (`taskset -c {locust_cpus}`)"
        if server_cpus
        else "Pinning: none (--no-pin): servers, ceiling and Locust share all CPUs"
    )
    return [
        f"Date: {datetime.now().isoformat(timespec='seconds')}",
        f"Machine: {cpu_count()} CPUs ({runtimes.cpu_name()}), {platform.system()} {platform.release()}; "
        f"load average at the start: {_load_average()}",
        model,
        f"Images: {images}; {args.images_per_request} image(s) per request",
        pinning,
        f"Ladder: {', '.join(map(str, users))} concurrent users, {args.step_seconds:g} s per step "
        f"after an untimed {args.warmup_seconds:g} s warm-up; closed loop (no wait between "
        "requests); Locust FastHttpUser, --reset-stats (ramp-up excluded)",
        f"Command: `{command}`",
    ]


def _load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
