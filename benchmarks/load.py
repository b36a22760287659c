"""Load-test the service and its peers over a ladder of concurrent users; write a report.

    python -m benchmarks.load                      # the BentoML service (/classify), started here
    python -m benchmarks.load --compare            # convzoo /v2 and /classify, then Triton, MLServer,
                                                   #   KServe and Ray Serve on OIP v2, and the ceiling
    python -m benchmarks.load --host http://127.0.0.1:3000   # a server that is already running
    python -m benchmarks.load --servers bentoml-v2 --users 1,4 --step-seconds 5 --no-ceiling
    python -m benchmarks.load --servers fastapi,ray   # the old TensorFlow tutorial peers (extras)

For each server: start it (``taskset -c SERVER_CPUS``; a peer of ``benchmarks.peers.PEERS`` with the
Python of its own virtual environment, built on first use), wait until it is ready, check that it
serves the requested export (``POST /metadata``, or the OIP model metadata), warm it up (every image
once, then a short untimed run at the top of the ladder), then one headless Locust run per step of
the ladder (``taskset -c LOCUST_CPUS``, fixed time per step, closed loop), and stop it. A server
that cannot be built, started or checked gets a NOT MEASURED line and the run goes on.

``--compare`` (issue 34) measures, on the same export, images and ladder (1, 32, 64 users, 20 s a
step after a 5 s warm-up): convzoo's ``/v2`` (OIP, binary tensor extension), convzoo's
``/classify`` (the two on one server, alternating A B B A at every level, half a step each window,
each protocol's two windows merged), then the peers ``triton``, ``mlserver``, ``kserve`` and
``ray-oip`` (OIP v2, binary where the peer accepts it); the in-process ceiling of the same work
(convzoo's decoding + the model, ``benchmarks.raw``'s ``service`` mode, batch sizes up to 32) on the
server CPUs before the first server and again after the last. Its report opens with one table:
requests/s and p50 per level, p99 per level and best ÷ ceiling per server, the load generator's CPU
and the load average per level, then issue 34's goals marked pass/FAIL. The old TensorFlow
tutorial peers (``fastapi``, ``ray``, and ``bentoml-tf``) run only when named in ``--servers``, and
never in that table.

Otherwise the in-process ceilings (``benchmarks.raw``) run alone, on the server CPUs: one per
runtime that a measured server uses, each just before the first server that runs on it (and the
12 MP one just after the service's 12 MP step), and each server is judged against its own
runtime's ceiling. Servers run one after the other, never together; ``bentoml-v2`` and ``bentoml``
named together are measured on one server, alternating, as with ``--compare`` (``--no-alternate``:
one after the other, each on its own server).

Output in ``benchmarks/results/<timestamp>/`` (or ``--out``): ``steps.csv``, ``ceiling.csv`` and
``ceiling-<runtime>.json``, ``report.md`` (header, headline, targets, a table per server, the
ceilings), ``plot.png``, plus ``locust/`` (Locust's own CSVs and logs per step) and ``logs/``
(servers). ``--docs docs`` also writes the report and its plot as the repository's
``docs/performance.md`` and ``docs/performance.png`` (the README links them).
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
from benchmarks.ladder import LocustError, Step, merge_steps, run_step
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, REPO, ModelRef, read_metadata, resolve
from benchmarks.report import (
    accuracy_targets,
    evaluate_targets,
    generator_note,
    generator_table,
    headline_table,
    issue34_goals,
    plot,
    same_work_ceiling,
    verdict,
    write_ceiling_csv,
    write_markdown,
    write_steps_csv,
)
from benchmarks.servers import (
    OIP_PEERS,
    SERVERS,
    RunningServer,
    ServerError,
    ServerSpec,
    check_served,
    known_servers,
    peer_python,
    pin_prefix,
    server_spec,
    warm_up,
)
from benchmarks.wire import PROTOCOLS
from service import runtimes
from service.config import cpu_count

RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_USERS = "1,2,4,8,16,32,64"
COMPARE_USERS = "1,32,64"
DEFAULT_CEILING_BATCH_SIZES = "1,2,4,8,16,32,64"
COMPARE_CEILING_BATCH_SIZES = "1,8,16,32"
COMPARE_SERVERS = ("bentoml-v2", "bentoml", *OIP_PEERS)
EXTRAS = ("bentoml-tf", "fastapi", "ray")
"""The TensorFlow tutorial peers (and the service on TensorFlow): labelled extras, never headline rows."""


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
        help=f"comma-separated, of {', '.join([*SERVERS, *OIP_PEERS])} (default: %(default)s)",
    )
    target.add_argument("--host", help="measure the server already running at this URL instead")
    parser.add_argument(
        "--users", help=f"the ladder (default: {DEFAULT_USERS}; with --compare {COMPARE_USERS})"
    )
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
    parser.add_argument(
        "--no-alternate",
        action="store_true",
        help="measure bentoml-v2 and bentoml one after the other, each on a server of its own "
        "(default: together on one server, alternating A B B A at every level)",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling")
    parser.add_argument(
        "--ceiling-batch-sizes",
        help=f"default: {DEFAULT_CEILING_BATCH_SIZES}; with --compare {COMPARE_CEILING_BATCH_SIZES}",
    )
    parser.add_argument(
        "--ceiling-modes",
        help="benchmarks.raw modes (default: all; with --compare service, the same work as the servers)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="classify",
        help="what to send to --host (default: %(default)s; the OIP ones need the export's name)",
    )
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
    _defaults(args)
    users = [int(u) for u in args.users.split(",")]
    server_cpus, locust_cpus = (None, None) if args.no_pin else (args.server_cpus, args.locust_cpus)
    servers = _servers(args)
    ref = (
        None
        if args.host and args.no_ceiling and args.protocol == "classify"
        else resolve(args.model, args.models_dir)
    )
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
    if not args.host:
        _prepare(servers, problems)  # the peers' environments, before anything is timed
    for group in _groups(servers, args):
        group = [name for name in group if name not in problems]
        if not group:
            continue
        runtime = _runtime(group[0])
        if not args.no_ceiling and runtime not in ceilings:
            ceilings[runtime] = _ceiling(ref, args, server_cpus, out, runtime)
        try:
            by_server.update(_measure(group, ref, args, images, users, server_cpus, locust_cpus, out))
        except (ServerError, LocustError, subprocess.TimeoutExpired) as error:
            for name in group:
                problems[name] = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"[{' and '.join(group)}] NOT MEASURED: {error}", flush=True)
            continue
        if subject in group and LARGE_PHOTO_STEPS.get(subject) is not None and runtime in ceilings:
            large_ceiling = _ceiling(ref, args, server_cpus, out, runtime, images="phone")["ceiling"]
    headline_runtime = _runtime("bentoml")
    if args.compare and not args.no_ceiling and headline_runtime in ceilings:
        # the same work again after the last server: the machine's drift over the run, shown
        ceilings[f"{headline_runtime} (after)"] = _ceiling(
            ref, args, server_cpus, out, headline_runtime, suffix="after"
        )

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
    titles = {name: _title(name) for name in servers}
    same_work = same_work_ceiling(
        [found["ceiling"] for key, found in ceilings.items() if key.split(" ")[0] == headline_runtime]
    )
    headline, goals = _headline(servers, titles, by_server, users, same_work, ceilings, problems, args)
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
        headline=headline,
    )
    plot(
        out / "plot.png",
        by_server,
        {runtime: found["ceiling"] for runtime, found in ceilings.items()},
        f"{ref.spec if ref else args.host}, {cpu_count()} CPUs, {args.images_per_request} image(s)/request",
    )
    if headline:
        print("\n" + "\n".join(line for line in headline if not line.startswith("![")))
    print(f"\nTargets (service under test: {subject}):")
    if not targets:
        print("  none could be evaluated (they need the ceiling and measured steps)")
    for target in targets:
        print(f"  {verdict(target)}  {target.name}: {target.measured} (goal {target.goal})")
    if goals:
        print("\nGoals of issue 34:")
        for goal in goals:
            print(f"  {verdict(goal)}  {goal.name}: {goal.measured} (goal {goal.goal})")
    print(f"\nreport: {out / 'report.md'}\nplot:   {out / 'plot.png'}")
    if args.docs:
        print("published: " + ", ".join(str(path) for path in publish(out, args.docs)))
    return 0 if all_steps else 1


def _prepare(servers: list[str], problems: dict[str, str]) -> None:
    """Build each peer's virtual environment now (``benchmarks.peers.envs.ensure_env``: minutes
    the first time, nothing after), so no build runs between two timed servers; a server that is
    unknown or whose environment cannot be built goes into ``problems`` (NOT MEASURED)."""
    for name in servers:
        try:
            spec = server_spec(name)
            if spec.venv is not None:
                print(f"[{name}] environment {spec.venv!r} ...", flush=True)
                print(f"[{name}] environment ready: {peer_python(spec)}", flush=True)
        except ServerError as error:
            problems[name] = str(error).splitlines()[0]
            print(f"[{name}] NOT MEASURED: {error}", flush=True)


def _defaults(args: argparse.Namespace) -> None:
    """The ladder, the ceiling's batch sizes and modes: --compare's own unless given."""
    if args.users is None:
        args.users = COMPARE_USERS if args.compare else DEFAULT_USERS
    if args.ceiling_batch_sizes is None:
        args.ceiling_batch_sizes = (
            COMPARE_CEILING_BATCH_SIZES if args.compare else DEFAULT_CEILING_BATCH_SIZES
        )
    if args.ceiling_modes is None and args.compare:
        args.ceiling_modes = "service"


def _title(name: str) -> str:
    """A server's title for the report; the TensorFlow tutorial peers labelled as extras."""
    try:
        title = server_spec(name).title
    except ServerError:
        title = name  # a peer benchmarks.peers does not know (its row says why), or --host
    return f"{title} [extra: TensorFlow, not the same model]" if name in EXTRAS else title


def _headline(
    servers: list[str],
    titles: dict[str, str],
    by_server: dict[str, list[Step]],
    users: list[int],
    same_work: float | None,
    ceilings: dict[str, dict],
    problems: dict[str, str],
    args,
) -> tuple[list[str], list]:
    """The report's opening (issue 34): the table of every non-extra server, the generator's CPU
    and load average per level, the ceiling it divides by, and (with --compare) the goals."""
    rows = [(name, titles[name]) for name in servers if name not in EXTRAS]
    if not rows or not any(by_server.get(name) for name, _ in rows) and not args.compare:
        return [], []
    measured = [
        f"{found['ceiling']['service_images_per_s']:.1f} images/s ({key}, batch "
        f"{found['ceiling']['service_batch_size']})"
        for key, found in ceilings.items()
        if key.split(" ")[0] == _runtime("bentoml") and found["ceiling"].get("service_images_per_s")
    ]
    lines = [
        "## Headline: the same export, every server",
        "",
        headline_table(rows, by_server, users, same_work, problems),
        "",
        f"Requests/s: successful answers per second ({args.images_per_request} photo(s) per request); "
        "p50/p99 from every "
        "response time of the step; best ÷ in-process ceiling: the server's best images/s ÷ "
        + (
            f"{same_work:.1f} images/s, the same work in one process with no HTTP (convzoo's "
            f"decoding + the model, `benchmarks.raw` `service` mode, on the server CPU; measured "
            f"{' and '.join(measured)})."
            if same_work
            else "the ceiling (not measured in this run: --no-ceiling)."
        ),
        "",
        *(
            [
                "convzoo's two rows: one server, measured alternating at every level (windows "
                "A B B A of half a step each; each row merges its two windows, percentiles over "
                "both; each window's req/s in the tables below).",
                "",
            ]
            if any(step.windows for name, _ in rows for step in by_server.get(name) or [])
            else []
        ),
        "### The load generator and the machine",
        "",
        generator_table(rows, by_server, users),
        "",
        "Locust CPU: its process's user + system CPU seconds ÷ wall seconds over the measured "
        "span (1.00 = all of its one core); load avg: the 1-minute load average after the step.",
        "",
        generator_note({name: by_server[name] for name, _ in rows if by_server.get(name)}),
        "",
    ]
    goals = issue34_goals(by_server, same_work) if args.compare else []
    if goals:
        lines += [
            "### Goals of issue 34",
            "",
            "| goal | measured | wanted | result |",
            "|---|---|---|---|",
            *(f"| {g.name} | {g.measured} | {g.goal} | {verdict(g)} |" for g in goals),
            "",
        ]
    return lines, goals


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
    known = {*known_servers(), *OIP_PEERS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown servers {unknown}; choose from {sorted(known)}")
    return names


SHARED_SERVER = ("bentoml-v2", "bentoml")
"""convzoo's two protocols: one server answers both, so a run with both measures them together on
one server, alternating (``_ladder``), not one after the other on two."""


def _groups(servers: list[str], args) -> list[list[str]]:
    """The servers in measuring order, those measured together on one server grouped: both of
    ``SHARED_SERVER`` at the place of the first (unless --host or --no-alternate)."""
    together = [n for n in servers if n in SHARED_SERVER]
    if args.host or args.no_alternate or len(together) < 2:
        return [[name] for name in servers]
    groups: list[list[str]] = []
    for name in servers:
        if name == together[0]:
            groups.append(together)
        elif name not in together:
            groups.append([name])
    return groups


def _measure(
    names: list[str],
    ref: ModelRef | None,
    args,
    images: list[Path],
    users: list[int],
    server_cpus: str | None,
    locust_cpus: str | None,
    out: Path,
) -> dict[str, list[Step]]:
    """All steps of the ladder against one server (started and stopped here unless --host), for
    each of ``names`` (several: the same server on each one's protocol, ``_ladder``)."""
    if args.host:
        host = ServerSpec("host", args.host, None, 0, protocol=args.protocol)
        check_served(args.host, ref, host)
        return _ladder([(names[0], host)], args.host, ref, args, images, users, locust_cpus, out)
    specs = [(name, server_spec(name)) for name in names]
    spec = specs[0][1]
    label = " and ".join(names)
    print(f"[{label}] starting: {spec.title}", flush=True)
    with RunningServer(spec, ref, args.models_dir, server_cpus, out / "logs" / f"{names[0]}.log") as server:
        print(f"[{label}] {shlex.join(server.argv)}", flush=True)
        print(f"[{label}] ready after {server.wait_ready():.1f} s on {server.url}", flush=True)
        for _, each in specs:
            check_served(server.url, ref, each)
        return _ladder(specs, server.url, ref, args, images, users, locust_cpus, out)


def _ladder(
    lanes: list[tuple[str, ServerSpec]],
    url: str,
    ref: ModelRef | None,
    args,
    images: list[Path],
    users: list[int],
    locust_cpus: str | None,
    out: Path,
) -> dict[str, list[Step]]:
    """Every level of the ladder against the server at ``url``, for each lane (a name and the spec
    whose protocol the users speak). One lane: a step of ``--step-seconds`` per level. Two (convzoo's
    two protocols on its one server): at every level four windows of half that, A B B A, each
    lane's two merged into its step (``merge_steps``: exact percentiles over both): so each has
    the same time at the level, and neither is always the first after a change of load (the order
    of servers measured one after the other swung the gap between the two by 5 %: issue 34)."""
    workloads = {
        name: {
            "protocol": spec.protocol,
            "model": ref.name if ref else None,
            "classes": len(read_metadata(ref)["labels"]) if ref else None,
            "column": spec.column,
        }
        for name, spec in lanes
    }
    labels = {name: name if name in known_servers() or name in OIP_PEERS else "host" for name, _ in lanes}
    for name, _ in lanes:
        warm_up(url, images, **workloads[name])
    if args.warmup_seconds > 0:
        for name, _ in lanes:
            print(f"[{name}] warm-up: {max(users)} users for {args.warmup_seconds:g} s", flush=True)
            run_step(
                name,
                url,
                max(users),
                args.warmup_seconds,
                images,
                args.images_per_request,
                out / "locust" / f"{labels[name]}-warmup",
                locust_cpus,
                **workloads[name],
            )
    names = [name for name, _ in lanes]
    order = names if len(names) == 1 else [names[0], names[1], names[1], names[0]]
    seconds = args.step_seconds / (len(order) // len(names))
    steps: dict[str, list[Step]] = {name: [] for name in names}
    for index, count in enumerate(users, 1):
        windows: dict[str, list[tuple[Step, Path]]] = {name: [] for name in names}
        for window, name in enumerate(order, 1):
            part = f"-w{window}" if len(order) > 1 else ""
            print(
                f"[{name}] step {index}/{len(users)}{f' window {window}/{len(order)}' if part else ''}: "
                f"{count} users for {seconds:g} s ...",
                end="",
                flush=True,
            )
            prefix = out / "locust" / f"{labels[name]}-u{count}{part}"
            step = run_step(
                name,
                url,
                count,
                seconds,
                images,
                args.images_per_request,
                prefix,
                locust_cpus,
                **workloads[name],
            )
            windows[name].append((step, Path(f"{prefix}_times.json")))
            cpu = "" if step.generator_cpu is None else f", Locust CPU {step.generator_cpu:.2f}"
            print(
                f" {step.ok_per_s:.1f} req/s, {step.images_per_s:.1f} images/s, p50 {step.p50_ms:.2f} ms, "
                f"p99 {step.p99_ms:.0f} ms, {step.failures} failures of {step.requests}{cpu}",
                flush=True,
            )
        for name in names:
            found = windows[name]
            steps[name].append(found[0][0] if len(found) == 1 else merge_steps(found))
            if len(found) > 1:
                merged = steps[name][-1]
                print(
                    f"[{name}] {count} users, windows merged: {merged.ok_per_s:.1f} req/s "
                    f"({merged.windows}), p50 {merged.p50_ms:.2f} ms, p99 {merged.p99_ms:.0f} ms",
                    flush=True,
                )
    for name, _ in lanes:
        # the one-client step with 12 MP photos: the service (/classify), or --host
        if (name == "bentoml" or labels[name] == "host") and not args.no_large_photo:
            phone = list(image_set("phone").paths)
            warm_up(url, phone[:2], **workloads[name])
            step = run_step(
                f"{name} (12 MP)",
                url,
                1,
                args.step_seconds,
                phone,
                1,
                out / "locust" / f"{labels[name]}-phone-u1",
                locust_cpus,
                **workloads[name],
            )
            LARGE_PHOTO_STEPS[name] = step
            print(f"[{name}] one client, 12 MP phone JPEGs: p50 {step.p50_ms:.1f} ms", flush=True)
    return steps


LARGE_PHOTO_STEPS: dict[str, Step] = {}
"""The one-client step with 12 MP phone JPEGs, by server (the BentoML service or --host only)."""


def _runtime(server: str) -> str:
    """The runtime of a server in this run (an already running ``--host``, or a peer on the same
    export as the service: the service's default)."""
    try:
        return server_spec(server).model_runtime()
    except ServerError:
        return SERVERS["bentoml"].model_runtime()


def _ceiling(
    ref: ModelRef,
    args,
    server_cpus: str | None,
    out: Path,
    runtime: str,
    images: str | None = None,
    suffix: str | None = None,
) -> dict:
    """Run ``benchmarks.raw`` on ``runtime`` in its own process on the server CPUs; its JSON.
    ``images``: another image set than the run's, at batch 1 only (the large-photo check);
    ``suffix``: a second measurement of the same (``after``: once every server has run)."""
    name = "-".join(part for part in ("ceiling", runtime, images, suffix) if part)
    result_path = out / f"{name}.json"
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
    if args.ceiling_modes:
        argv += ["--modes", args.ceiling_modes]
    print(f"[ceiling {runtime}{f' {suffix}' if suffix else ''}] {shlex.join(argv)}", flush=True)
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
        "requests); Locust FastHttpUser, --reset-stats (ramp-up excluded); one load generator "
        "for every server (benchmarks/locustfile.py: /classify multipart, or OIP v2 with the "
        "binary tensor extension where the server accepts it, else JSON with base64 BYTES)",
        f"Command: `{command}`",
    ]


def _load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
