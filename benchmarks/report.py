"""The load benchmark's outputs: ``steps.csv``, ``ceiling.csv``, ``report.md`` and ``plot.png``.

The targets (each a ratio from the same run on the same machine) compare the service under test
(the BentoML service when measured, else the first server) with the in-process ceiling of the
runtime that serves it, with itself on TensorFlow, and with peers:

- efficiency: images/s at saturation ÷ in-process end-to-end ceiling images/s, at least 0.90;
- one client: p50 at one user ÷ the in-process p50 of the same work at batch 1, at most 1.3;
- one client, 12 MP phone JPEGs: the same ratio on the phone set, at most 1.15;
- overhead: p50 at one user − in-process end-to-end p50 at batch 1, at most 3 ms;
- p50 at one user: at most 5 ms;
- vs bentoml-tf (the same service with ``CONVZOO_RUNTIME=tensorflow``): at least 2× its images/s;
- vs FastAPI: at least 2× its images/s at saturation, with p99 no worse;
- vs Ray Serve: more images/s at saturation than it, with p99 no worse;
- accuracy: the serving runtime's top-1 on the held-out test split (``metadata.json``, measured by
  ``python -m training optimize``) at most 0.5 points below the SavedModel's.

"Saturation" is the step with the most images/s. "p99 no worse" compares the p99 of both servers
at the same number of users: the one where the service under test saturates.

The headline of ``--compare`` (issue 34): one row per server on the same export (convzoo's ``/v2``
and ``/classify``, then the OIP peers), requests/s and p50 per level of the ladder, p99 per level,
and each server's best images/s ÷ the in-process ceiling of the same work (convzoo's decoding + the
model, ``benchmarks.raw``'s ``service`` mode, best batch size up to 32); beside it the load
generator's CPU and the load average per level. Its goals (``issue34_goals``), each from the same
run: convzoo at least Triton's requests/s at every level with a p50 no worse (each protocol),
``/v2`` and ``/classify`` each at least 0.90 of the ceiling at saturation, and the two protocols'
saturation images/s within 5 % of each other.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.ladder import GENERATOR_SATURATED, Step

EFFICIENCY_GOAL = 0.90
ONE_CLIENT_RATIO_GOAL = 1.3
LARGE_PHOTO_RATIO_GOAL = 1.15
OVERHEAD_GOAL_MS = 3.0
ONE_USER_P50_GOAL_MS = 5.0
FASTAPI_FACTOR_GOAL = 2.0
TENSORFLOW_FACTOR_GOAL = 2.0
TOP1_DROP_GOAL = 0.005
SAME_WORK_GOAL = 0.90
PROTOCOLS_APART_GOAL = 0.05
CONVZOO_ROWS = {"bentoml-v2": "convzoo /v2", "bentoml": "convzoo /classify"}
REFERENCE_PEER = "triton"


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    goal: str
    passed: bool | None  # None: not measurable in this run


def saturation(steps: list[Step]) -> Step:
    return max(steps, key=lambda s: s.images_per_s)


def at_users(steps: list[Step], users: int) -> Step | None:
    return next((s for s in steps if s.users == users), None)


def evaluate_targets(
    subject: str,
    by_server: dict[str, list[Step]],
    ceiling: dict | None,
    large: Step | None = None,
    large_ceiling: dict | None = None,
) -> list[Target]:
    steps = by_server.get(subject) or []
    if not steps:
        return []
    peak = saturation(steps)
    targets = _ratio_targets(at_users(steps, 1), ceiling, large, large_ceiling)
    if ceiling and "e2e_images_per_s" in ceiling:
        ratio = peak.images_per_s / ceiling["e2e_images_per_s"]
        targets.append(
            Target(
                "efficiency",
                f"{peak.images_per_s:.1f} / {ceiling['e2e_images_per_s']:.1f} = {ratio:.2f} "
                f"({peak.users} users; ceiling {ceiling['e2e_mode']} batch {ceiling['e2e_batch_size']})",
                f">= {EFFICIENCY_GOAL:.2f}",
                ratio >= EFFICIENCY_GOAL,
            )
        )
    one_user = at_users(steps, 1)
    if ceiling and "e2e_p50_ms_batch1" in ceiling and one_user is not None:
        overhead = one_user.p50_ms - ceiling["e2e_p50_ms_batch1"]
        targets.append(
            Target(
                "overhead at one user",
                f"{one_user.p50_ms:.1f} − {ceiling['e2e_p50_ms_batch1']:.1f} = "
                f"{overhead:.1f} ms (p50; ceiling {ceiling['e2e_batch1_mode']} batch 1)",
                f"<= {OVERHEAD_GOAL_MS:.0f} ms",
                overhead <= OVERHEAD_GOAL_MS,
            )
        )
    if one_user is not None:
        targets.append(
            Target(
                "p50 at one user",
                f"{one_user.p50_ms:.1f} ms",
                f"<= {ONE_USER_P50_GOAL_MS:.0f} ms",
                one_user.p50_ms <= ONE_USER_P50_GOAL_MS,
            )
        )
    if subject != "bentoml-tf" and by_server.get("bentoml-tf"):
        tf_peak = saturation(by_server["bentoml-tf"])
        ratio = peak.images_per_s / tf_peak.images_per_s if tf_peak.images_per_s else math.inf
        targets.append(
            Target(
                "vs bentoml-tf",
                f"{peak.images_per_s:.1f} / {tf_peak.images_per_s:.1f} = {ratio:.2f}x (saturation)",
                f">= {TENSORFLOW_FACTOR_GOAL:g}x images/s",
                ratio >= TENSORFLOW_FACTOR_GOAL,
            )
        )
    for peer, factor, strict in (("fastapi", FASTAPI_FACTOR_GOAL, False), ("ray", 1.0, True)):
        if peer != subject and by_server.get(peer):
            targets.append(_versus(subject, peak, peer, by_server[peer], factor, strict))
    return targets


def _ratio_targets(
    one_user: Step | None, ceiling: dict | None, large: Step | None, large_ceiling: dict | None
) -> list[Target]:
    """One client's p50 over the in-process p50 of the same work at batch 1: real photos, and 12 MP
    phone JPEGs (the HTTP path's own cost, as a ratio from the same run)."""
    targets = []
    for name, step, found, goal in (
        ("one client / in-process", one_user, ceiling, ONE_CLIENT_RATIO_GOAL),
        ("one client, 12 MP JPEG / in-process", large, large_ceiling, LARGE_PHOTO_RATIO_GOAL),
    ):
        if step is not None and found and found.get("e2e_p50_ms_batch1"):
            ratio = step.p50_ms / found["e2e_p50_ms_batch1"]
            targets.append(
                Target(
                    name,
                    f"{step.p50_ms:.1f} / {found['e2e_p50_ms_batch1']:.1f} ms = {ratio:.2f} (p50, batch 1)",
                    f"<= {goal:.2f}",
                    ratio <= goal,
                )
            )
    return targets


def accuracy_targets(metadata: dict, runtime_key: str) -> list[Target]:
    """The serving runtime's held-out top-1 against the SavedModel's (``metadata["runtimes"]``)."""
    entries = metadata.get("runtimes") or {}
    if runtime_key not in entries or "tensorflow" not in entries:
        return []
    found, reference = entries[runtime_key]["test"], entries["tensorflow"]["test"]
    drop = reference["top1"] - found["top1"]
    return [
        Target(
            "top-1 vs the SavedModel",
            f"{runtime_key} {100 * found['top1']:.2f} % vs "
            f"{100 * reference['top1']:.2f} % ({-100 * drop:+.2f} points, "
            f"{100 * found.get('agreement', 1):.1f} % "
            f"same answers, {found['images']} held-out test images)",
            f"at most {100 * TOP1_DROP_GOAL:.1f} points below",
            drop <= TOP1_DROP_GOAL + 1e-9,
        )
    ]


def _versus(
    subject: str, peak: Step, peer: str, peer_steps: list[Step], factor: float, strict: bool
) -> Target:
    peer_peak = saturation(peer_steps)
    ratio = peak.images_per_s / peer_peak.images_per_s if peer_peak.images_per_s else math.inf
    fast_enough = ratio > factor if strict else ratio >= factor
    same_users = at_users(peer_steps, peak.users)
    p99_ok = same_users is not None and peak.p99_ms <= same_users.p99_ms
    p99_text = (
        f"p99 at {peak.users} users {peak.p99_ms:.0f} vs {same_users.p99_ms:.0f} ms"
        if same_users
        else f"{peer} has no step at {peak.users} users"
    )
    goal = f"{'>' if strict else '>='} {factor:g}x images/s, p99 no worse"
    return Target(
        f"vs {peer}",
        f"{peak.images_per_s:.1f} / {peer_peak.images_per_s:.1f} = {ratio:.2f}x; {p99_text}",
        goal,
        fast_enough and p99_ok,
    )


def same_work_ceiling(ceilings: list[dict]) -> float | None:
    """The in-process images/s of the same work every server does (convzoo's decoding + the
    model: ``benchmarks.raw``'s ``service`` mode, best batch size), the mean of the measurements
    taken in the run (before the first server and after the last); None without one."""
    found = [c["service_images_per_s"] for c in ceilings if c and c.get("service_images_per_s")]
    return sum(found) / len(found) if found else None


def headline_table(
    rows: list[tuple[str, str]],
    by_server: dict[str, list[Step]],
    levels: list[int],
    ceiling: float | None,
    problems: dict[str, str],
) -> str:
    """Issue 34's table: one row per (server, title) of ``rows``: successful requests/s and p50 at
    each level, p99 per level, best images/s ÷ ``ceiling``; a server not measured says why."""
    heads = [f"{n} client{'s' if n != 1 else ''} req/s, p50" for n in levels]
    lines = [
        "| server | " + " | ".join(heads) + " | p99 per level (ms) | best ÷ in-process ceiling |",
        "|---|" + "---:|" * len(levels) + "---:|---:|",
    ]
    for name, title in rows:
        steps = by_server.get(name)
        if not steps:
            why = problems.get(name, "not run")
            lines.append(f"| {title} | NOT MEASURED: {_escape(why)} |" + " |" * (len(levels) + 1))
            continue
        cells, p99s = [], []
        for users in levels:
            step = at_users(steps, users)
            cells.append("" if step is None else f"{step.ok_per_s:.1f}, {step.p50_ms:.2f} ms")
            p99s.append("–" if step is None else f"{step.p99_ms:.0f}")
        best = saturation(steps)
        ratio = f"{best.images_per_s / ceiling:.2f}" if ceiling else "n/a"
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {' / '.join(p99s)} | {ratio} |")
    return "\n".join(lines)


def generator_table(rows: list[tuple[str, str]], by_server: dict[str, list[Step]], levels: list[int]) -> str:
    """Per server and level: the load generator's CPU (cores: Locust's CPU seconds ÷ wall seconds)
    and the machine's 1-minute load average after the step."""
    heads = [f"{n} client{'s' if n != 1 else ''}: Locust CPU, load avg" for n in levels]
    lines = ["| server | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(levels)]
    for name, title in rows:
        steps = by_server.get(name)
        if not steps:
            continue
        cells = []
        for users in levels:
            step = at_users(steps, users)
            cells.append(
                ""
                if step is None
                else f"{_cell(step.generator_cpu, 2) or '?'}, {_cell(step.load_average, 2) or '?'}"
            )
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generator_note(by_server: dict[str, list[Step]]) -> str:
    """Whether Locust, one gevent process on one core, set the pace anywhere."""
    measured = [s for steps in by_server.values() for s in steps if s.generator_cpu is not None]
    if not measured:
        return "The load generator's CPU was not measured (no figures from the locustfile)."
    top = max(measured, key=lambda s: s.generator_cpu)
    busy = [s for s in measured if s.generator_cpu >= GENERATOR_SATURATED]
    if not busy:
        return (
            f"The load generator was not the bottleneck: Locust used at most {top.generator_cpu:.2f} "
            f"of its core ({top.server}, {top.users} users), below {GENERATOR_SATURATED:.2f} at every step."
        )
    where = ", ".join(f"{s.server} at {s.users} users ({s.generator_cpu:.2f})" for s in busy)
    return (
        f"**Locust saturated its core** (≥ {GENERATOR_SATURATED:.2f} of it) against {where}: there "
        "the generator, not the server, may have set the pace, and those rows understate the server "
        "(a leaner client is the remedy, issue 34)."
    )


def issue34_goals(by_server: dict[str, list[Step]], ceiling: float | None) -> list[Target]:
    """Issue 34's goals, each from this run: convzoo ≥ Triton at every level (requests/s, p50 no
    worse), each protocol; ``/v2`` and ``/classify`` each ≥ 0.90 of the same-work ceiling at
    saturation; the two protocols' saturation images/s within 5 % of each other."""
    goals = []
    peer = by_server.get(REFERENCE_PEER) or []
    for name, label in CONVZOO_ROWS.items():
        ours = by_server.get(name) or []
        levels = [s.users for s in ours if at_users(peer, s.users)]
        if not ours or not levels:
            goals.append(Target(f"{label} ≥ Triton at every level", "not measured", ">= req/s, p50 <=", None))
            continue
        parts, passed = [], True
        for users in levels:
            a, b = at_users(ours, users), at_users(peer, users)
            passed &= a.ok_per_s >= b.ok_per_s and a.p50_ms <= b.p50_ms
            parts.append(
                f"{users}: {a.ok_per_s:.1f} vs {b.ok_per_s:.1f} req/s, "
                f"p50 {a.p50_ms:.2f} vs {b.p50_ms:.2f} ms"
            )
        goals.append(
            Target(f"{label} ≥ Triton at every level", "; ".join(parts), ">= req/s and p50 <=", passed)
        )
    for name, label in CONVZOO_ROWS.items():
        ours = by_server.get(name) or []
        if not ours or not ceiling:
            goals.append(Target(f"{label} ÷ ceiling", "not measured", f">= {SAME_WORK_GOAL:.2f}", None))
            continue
        best = saturation(ours)
        ratio = best.images_per_s / ceiling
        goals.append(
            Target(
                f"{label} ÷ ceiling",
                f"{best.images_per_s:.1f} / {ceiling:.1f} = {ratio:.2f} ({best.users} users)",
                f">= {SAME_WORK_GOAL:.2f}",
                ratio >= SAME_WORK_GOAL,
            )
        )
    v2, classify = by_server.get("bentoml-v2"), by_server.get("bentoml")
    if v2 and classify:
        a, b = saturation(v2).images_per_s, saturation(classify).images_per_s
        apart = abs(a - b) / max(a, b) if max(a, b) else 0.0
        goals.append(
            Target(
                "/v2 and /classify within 5 %",
                f"{a:.1f} vs {b:.1f} images/s at saturation: {100 * apart:.1f} % apart",
                f"<= {100 * PROTOCOLS_APART_GOAL:.0f} %",
                apart <= PROTOCOLS_APART_GOAL,
            )
        )
    else:
        goals.append(Target("/v2 and /classify within 5 %", "not measured", "<= 5 %", None))
    return goals


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:200]


def write_steps_csv(path: Path, steps: list[Step]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Step)])
        writer.writeheader()
        writer.writerows(asdict(s) for s in steps)


def write_ceiling_csv(path: Path, points: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(points[0]))
        writer.writeheader()
        writer.writerows(points)


def _cell(value: float | None, digits: int) -> str:
    """A server-side figure, empty where the server has none (a peer without convzoo metrics)."""
    return "" if value is None else f"{value:.{digits}f}"


def steps_table(steps: list[Step]) -> str:
    """Locust's figures (client side), then the server's own from its /metrics (empty for peers)."""
    windows = any(s.windows for s in steps)  # steps merged from alternating windows (merge_steps)
    lines = [
        "| users | requests | failures | requests/s | images/s | p50 ms | p95 ms | p99 ms "
        "| queue ms | inference ms/batch | batch size | worker RSS MiB |"
        + (" req/s of each window |" if windows else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if windows else ""),
    ]
    lines += [
        f"| {s.users} | {s.requests} | {s.failures} | {s.requests_per_s:.1f} | "
        f"{s.images_per_s:.1f} | {s.p50_ms:.1f} | {s.p95_ms:.0f} | {s.p99_ms:.0f} | "
        f"{_cell(s.queue_ms, 1)} | {_cell(s.inference_ms, 1)} | {_cell(s.batch_size, 2)} | "
        f"{_cell(s.rss_mib, 0)} |" + (f" {s.windows} |" if windows else "")
        for s in steps
    ]
    return "\n".join(lines)


SERVER_COLUMNS_NOTE = (
    "Queue ms, inference ms/batch, batch size and worker RSS are the server's own figures, from "
    "its `/metrics` read before and after each step (`_sum`/`_count` deltas of "
    "`convzoo_queue_duration_seconds` per request, `convzoo_inference_duration_seconds` per model "
    "call, `convzoo_batch_size`; `convzoo_process_resident_memory_bytes` after the step, the "
    "largest worker); the other columns are Locust's, client side. Empty: a server without "
    "convzoo metrics (the peers)."
)


def decoding_reference(subject: str, by_server: dict[str, list[Step]], ceiling: dict | None) -> str:
    """A sentence splitting the service's distance to the ceiling into decoding and serving."""
    steps = by_server.get(subject) or []
    summary = (ceiling or {}).get("ceiling") or {}
    if not steps or "service_images_per_s" not in summary:
        return ""
    peak = saturation(steps)
    reference = summary["service_images_per_s"]
    return (
        f"For reference (not a target): the service's own decoding (`service` mode) and the "
        f"model in-process reach {reference:.1f} images/s (batch "
        f"{summary['service_batch_size']}); the service serves {peak.images_per_s:.1f} / "
        f"{reference:.1f} = {peak.images_per_s / reference:.2f} of that, the rest being HTTP, "
        f"batching and thread switches."
    )


def ceiling_table(points: list[dict]) -> str:
    lines = [
        "| mode | batch | runs | batch p50 ms | batch p95 ms | images/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['mode']} | {p['batch_size']} | {p['runs']} | {p['p50_ms']:.1f} | "
        f"{p['p95_ms']:.1f} | {p['images_per_s']:.1f} |"
        for p in points
    ]
    return "\n".join(lines)


def targets_table(subject: str, targets: list[Target]) -> str:
    lines = [
        f"Service under test: **{subject}**.",
        "",
        "| target | measured | goal | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t.name} | {t.measured} | {t.goal} | {verdict(t)} |" for t in targets]
    return "\n".join(lines)


def verdict(target: Target) -> str:
    return "n/a" if target.passed is None else "pass" if target.passed else "FAIL"


def write_markdown(
    path: Path,
    *,
    header: list[str],
    titles: dict[str, str],
    subject: str,
    by_server: dict[str, list[Step]],
    ceilings: dict[str, dict],
    targets: list[Target],
    problems: dict[str, str],
    headline: list[str] = (),
) -> None:
    """``ceilings``: runtime -> ``benchmarks.raw`` result; the subject's is its first one.
    ``headline``: markdown lines placed first (``--compare``'s table and goals)."""
    parts = ["# convzoo load benchmark", "", *(f"- {line}" for line in header), "", *headline]
    parts += [
        "## Targets",
        "",
        targets_table(subject, targets)
        if targets
        else "No target could be evaluated (the service under test has no steps).",
        "",
    ]
    ceiling = next(iter(ceilings.values()), None)
    if reference := decoding_reference(subject, by_server, ceiling):
        parts += [reference, ""]
    for server, steps in by_server.items():
        peak = saturation(steps)
        parts += [
            f"## {server}: {titles.get(server, server)}",
            "",
            steps_table(steps),
            "",
            f"Saturation: {peak.images_per_s:.1f} images/s at {peak.users} users (p99 {peak.p99_ms:.0f} ms).",
            "",
        ]
        failed = [s for s in steps if s.failures]
        if failed:
            parts += [
                "Failures (most frequent error per step):",
                "",
                *(f"- {s.users} users: {s.top_failure}" for s in failed),
                "",
            ]
    for runtime, found in ceilings.items():
        served = found.get("runtime") or {}
        parts += [
            f"## Ceiling, runtime {runtime}: {served.get('name', 'tensorflow')} "
            f"{served.get('precision', 'fp32')} in-process (benchmarks.raw)",
            "",
            f"Command: `{found['command']}`",
            "",
            ceiling_table(found["points"]),
            "",
        ]
    if problems:
        parts += ["## Not measured", "", *(f"- {name}: {why}" for name, why in problems.items()), ""]
    if any(s.queue_ms is not None for steps in by_server.values() for s in steps):
        parts += [SERVER_COLUMNS_NOTE, ""]
    parts += ["![images/s against p99 latency](plot.png)", ""]
    path.write_text("\n".join(parts))


def plot(path: Path, by_server: dict[str, list[Step]], ceilings: dict[str, dict], title: str) -> None:
    """images/s (y) against p99 latency (x, log), one line per server, each runtime's ceiling
    (``benchmarks.raw`` summaries by runtime) as a horizontal line."""
    served = {server: steps for server, steps in by_server.items() if _has_server_figures(steps)}
    if served:
        figure, (axes, queue_axes, memory_axes) = plt.subplots(
            1, 3, figsize=(17, 6.5), dpi=110, gridspec_kw={"width_ratios": [8, 5, 4]}
        )
        _plot_server_side(queue_axes, memory_axes, served)
    else:
        figure, axes = plt.subplots(figsize=(8, 6.5), dpi=110)
    for server, steps in by_server.items():
        ordered = sorted(steps, key=lambda s: s.users)
        axes.plot([s.p99_ms for s in ordered], [s.images_per_s for s in ordered], marker="o", label=server)
        for s in ordered:
            axes.annotate(
                str(s.users),
                (s.p99_ms, s.images_per_s),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    for (runtime, ceiling), style in zip(ceilings.items(), ("--", ":", "-."), strict=False):
        if "e2e_images_per_s" in ceiling:
            axes.axhline(
                ceiling["e2e_images_per_s"],
                color="black",
                linestyle=style,
                label=f"in-process end-to-end ceiling, runtime {runtime} ({ceiling['e2e_mode']})",
            )
    axes.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(base=10, subs=(2, 5)))
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("p99 latency (ms, log scale)")
    axes.set_ylabel("images/s")
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(
        fontsize=8,
        title="numbers: concurrent users",
        title_fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=3,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _has_server_figures(steps: list[Step]) -> bool:
    return any(s.queue_ms is not None or s.rss_mib is not None for s in steps)


def _plot_server_side(queue_axes, memory_axes, by_server: dict[str, list[Step]]) -> None:
    """Per step (users, log 2): mean queue and inference ms (lines) with the mean batch size
    (dashed, right axis); the largest worker's resident memory after each step."""
    batch_axes = queue_axes.twinx()
    for server, steps in by_server.items():
        ordered = sorted(steps, key=lambda s: s.users)
        users = [s.users for s in ordered]

        def values(name: str, steps=ordered) -> list[float]:
            return [math.nan if getattr(s, name) is None else getattr(s, name) for s in steps]

        queue_axes.plot(users, values("queue_ms"), marker="o", label=f"{server}: queue (per request)")
        queue_axes.plot(users, values("inference_ms"), marker="s", label=f"{server}: inference (per batch)")
        batch_axes.plot(
            users, values("batch_size"), linestyle="--", color="gray", label=f"{server}: batch size"
        )
        memory_axes.plot(users, values("rss_mib"), marker="o", label=server)
    for axes in (queue_axes, memory_axes):
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes.set_xlabel("concurrent users")
        axes.grid(True, which="both", alpha=0.3)
        axes.set_ylim(bottom=0)
    batch_axes.set_ylim(bottom=0)
    queue_axes.set_ylabel("ms (server side, /metrics)")
    batch_axes.set_ylabel("images per model call")
    queue_axes.set_title("The server's side: queue vs inference", fontsize=10)
    lines = queue_axes.get_legend_handles_labels()
    extra = batch_axes.get_legend_handles_labels()
    queue_axes.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7, loc="upper left")
    memory_axes.set_ylabel("MiB")
    memory_axes.set_title("Worker resident memory after each step", fontsize=10)
    memory_axes.legend(fontsize=7)
