"""Train several architectures with one recipe and compare accuracy, size and speed on this machine.

    python -m training compare --archs lenet5,resnet50,mobilenet_v2,convnext_tiny \\
        --data /work/shared/data/imagenette2-train --image-size 96 --epochs 10 --time-budget 30

Every architecture is trained by ``python -m training fit`` with the same recipe: data, split and
seed, image size, epochs, batch size, optimizer, learning-rate schedule, label smoothing,
augmentation. The results land in ``--out`` (default ``runs/compare-<data>_<size>px_<epochs>ep/``):

    <arch>/                  the fit run (run.json, log.csv, best.keras...), fit.log, measurements.json
    models/<arch>/<version>/ its export (kept apart from the repository's models/)
    results.csv              one row per finished architecture
    results.md               the same as a table, under a header saying how it was obtained
    accuracy_vs_latency.png  test top-1 against batch-1 latency, marker area proportional to parameters
    accuracy_vs_training_time.png

Measured per architecture: parameters and FLOPs (multiply-adds at the training size, from the
export's metadata), training images/s (fit's median epoch after the first, validation pass
included), training time (the sum of the epochs in log.csv, resumed sessions included), epochs
until the validation top-1 first reaches ``--target-accuracy``, held-out test top-1/top-5, and the
exported SavedModel's ``serving_default`` on random uint8 images at the training size: batch-1
latency and batch-32 throughput, each the median of ``--repeats`` calls after 3 warm-up calls,
with TensorFlow's default thread pools (every core of this machine).

Resumable: run the same command again after a crash, a Ctrl-C or a kill. Finished architectures
(run.json with test metrics, and an export) are skipped; an interrupted one resumes from its last
finished epoch (``training.backup``); measurements are kept in ``measurements.json`` and reused
(``--remeasure`` takes them again, e.g. on a quiet machine). A folder holding runs of another
recipe is refused rather than mixed into one table. More architectures can be added later with
the same recipe: only the new ones train.

``--time-budget MINUTES`` applies to each architecture (so they all get the same training time and
a comparison of N architectures takes about N times the budget, plus evaluation, export and
measurement): fit's ``--time-limit`` stops an architecture at the end of the epoch after which
one more epoch would overrun, then evaluates and exports it as usual; the table shows how many
of the planned epochs it ran. The learning rate then has not decayed to zero.

Each architecture trains in its own ``python -m training fit`` process rather than in this one:
one architecture that crashes or runs out of memory is reported and the others still run; the
memory TensorFlow holds is returned between architectures; a Ctrl-C or kill leaves exactly what
fit's own crash-safety resumes; and each run.json records a plain fit command that reproduces
that run alone. This costs a few seconds of start-up per architecture.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from service.config import cpu_count
from service.repository import read_metadata
from service.runtimes import cpu_name
from training.architectures import model_info
from training.cli import command_line, options_argv
from training.flops import format_count
from training.optimize import WARMUP_CALLS
from training.recipe import Recipe
from training.runs import best_logged, config_changes, logged_seconds, read_json, read_log, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHS = (
    "lenet5",
    "alexnet",
    "vgg16",
    "inception_v3",
    "resnet50",
    "xception",
    "densenet121",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
)
# The Recipe fields compare takes as flags, shared by every `fit` it runs.
RECIPE = (
    "data",
    "labels_map",
    "image_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "augment",
    "patience",
    "validation_fraction",
    "test_fraction",
    "limit",
    "seed",
    "jit_compile",
    "mixed_precision",
    "no_optimize",
)
COLUMNS = (
    "arch",
    "family",
    "year",
    "params",
    "flops",
    "image_size",
    "epochs_done",
    "epochs_planned",
    "stopped",
    "train_images_per_s",
    "train_minutes",
    "target_val_top1",
    "epochs_to_target",
    "best_val_top1",
    "test_top1",
    "test_top5",
    "latency_ms_batch1",
    "images_per_s_batch32",
    "export",
)


class CompareError(RuntimeError):
    """Bad options, or an output folder holding runs of another recipe."""


# compare's defaults and help where they differ from fit's (the flags are the Recipe's fields).
RECIPE_DEFAULTS = {
    "image_size": 96,
    "epochs": 10,
    "batch_size": 32,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "patience": 0,
}
RECIPE_HELP = {
    "image_size": "square training size for every architecture",
    "lr": "peak learning rate",
    "batch_size": None,
    "validation_fraction": None,
    "test_fraction": None,
    "weight_decay": "(default: fit's, 0.05 for adamw)",
    "patience": "early-stopping patience (0: all run every epoch)",
    "jit_compile": "XLA (fit's --jit-compile)",
    "mixed_precision": "mixed_float16 training (GPU only)",
}
DEFAULTS = {"archs": ",".join(DEFAULT_ARCHS), "target_accuracy": 0.5, "repeats": 20}  # compare's own


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--archs", default=DEFAULTS["archs"], help="comma-separated names (default: %(default)s)")
    Recipe.add_arguments(parser, only=RECIPE, defaults=RECIPE_DEFAULTS, help=RECIPE_HELP)
    p("--time-budget", type=float, metavar="MINUTES", help="training time per architecture")
    p(
        "--target-accuracy",
        type=float,
        default=DEFAULTS["target_accuracy"],
        help="validation top-1 for 'epochs to reach'",
    )
    p("--repeats", type=int, default=DEFAULTS["repeats"], help="timed calls per latency / throughput median")
    p("--remeasure", action="store_true", help="measure latency and throughput again")
    p("--out", type=Path, help="output folder (default: runs/compare-<data>_<size>px_<epochs>ep)")


def main(args: argparse.Namespace) -> int:
    try:
        results = compare(args)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if results["failed"] else 0


def compare(args: argparse.Namespace) -> dict:
    """Train (or reuse), measure and report every architecture; returns the rows and failures."""
    archs = parse_archs(args.archs, args.image_size)
    if not 0 < args.target_accuracy <= 1:
        raise CompareError(f"--target-accuracy must be a fraction in (0, 1], got {args.target_accuracy}")
    if args.data != "imagenette":  # an absolute path: the same recipe from any working directory
        args = argparse.Namespace(**{**vars(args), "data": str(Path(args.data).resolve())})
    out = args.out or default_out(args)
    shared = shared_recipe(args, out)
    recipes = {arch: dataclasses.replace(shared, arch=arch, run_name=arch) for arch in archs}
    plans = {arch: ["fit", *recipe.to_argv()] for arch, recipe in recipes.items()}
    for arch, recipe in recipes.items():
        check_recipe(out / arch, recipe.config())  # before anything trains

    rows, failed = [], []
    for i, arch in enumerate(archs, 1):
        step = f"[{i}/{len(archs)}] {arch}"
        run = finished_run(out / arch)
        if run is not None:
            print(f"{step}: skipping training, finished in {out / arch}", flush=True)
        else:
            print(f"{step}: training (log: {out / arch / 'fit.log'})", flush=True)
            code = train(plans[arch], out / arch / "fit.log")
            run = finished_run(out / arch)
            if run is None:
                failed.append(arch)
                print(f"{step}: FAILED (fit exit code {code}); the end of its log:\n{log_tail(out / arch)}")
                continue
        row = result_row(arch, out / arch, run, args)
        rows.append(row)
        print(f"{step}: {summary(row)}", flush=True)

    write_reports(out, rows, failed, args)
    print(f"results: {out / 'results.md'}, {out / 'results.csv'} and plots in {out}")
    return {"rows": rows, "failed": failed, "out": out}


def parse_archs(text: str, image_size: int) -> list[str]:
    """Names in order, without repeats, each known and able to take ``image_size``."""
    archs = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not archs:
        raise CompareError("--archs names no architecture")
    for arch in archs:
        try:
            info = model_info(arch)
        except KeyError as error:
            raise CompareError(error.args[0]) from None
        if image_size < info.min_size:
            raise CompareError(
                f"{arch} needs images of at least {info.min_size} px; --image-size {image_size} is too small"
            )
    return archs


def default_out(args: argparse.Namespace) -> Path:
    data_name = Path(args.data).name
    return Path("runs") / f"compare-{data_name}_{args.image_size}px_{args.epochs}ep"


def shared_recipe(args: argparse.Namespace, out: Path) -> Recipe:
    """The Recipe every architecture trains with (its ``arch`` and ``run_name`` set per run)."""
    return Recipe.from_args(
        args, arch="", time_limit=args.time_budget, runs_dir=str(out), models_dir=str(out / "models")
    )


def command_argv(args: argparse.Namespace) -> list[str]:
    """``compare``'s own arguments, rebuilt from ``args`` (for the report)."""
    own = {key: getattr(args, key) for key in ("archs",)}
    shared = Recipe.from_args(args, arch="").to_argv(only=RECIPE, defaults=RECIPE_DEFAULTS)
    rest = {
        key: getattr(args, key) for key in ("time_budget", "target_accuracy", "repeats", "remeasure", "out")
    }
    return [*options_argv(own, DEFAULTS), *shared, *options_argv(rest, DEFAULTS)]


def check_recipe(run_dir: Path, config: dict) -> None:
    """Refuse a run folder whose finished or resumable run used another recipe."""
    run = read_json(run_dir / "run.json")
    if run is None or not (run.get("metrics") or (run_dir / "backup").is_dir()):
        return
    changed = config_changes(run["config"], config)
    if changed:
        raise CompareError(
            f"{run_dir} holds a run of another recipe (differs in: {', '.join(changed)}); "
            "use another --out, or repeat the options of that comparison"
        )


def finished_run(run_dir: Path) -> dict | None:
    """run.json of a finished fit run (held-out metrics recorded), else None."""
    run = read_json(run_dir / "run.json")
    return run if run and run.get("metrics") else None


def train(argv: list[str], log_path: Path) -> int:
    """Run ``python -m training fit`` in a child process, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    with open(log_path, "a") as log:
        log.write(f"\n$ python -m training {shlex.join(argv)}\n")
        log.flush()
        child = subprocess.run(
            [sys.executable, "-m", "training", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path},
        )
    return child.returncode


def log_tail(run_dir: Path, lines: int = 15) -> str:
    text = (run_dir / "fit.log").read_text(errors="replace") if (run_dir / "fit.log").exists() else ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# --------------------------------------------------------------------------- measuring


def result_row(arch: str, run_dir: Path, run: dict, args: argparse.Namespace) -> dict:
    """One results row: from run.json, log.csv, the export's metadata and the latency measurements."""
    export = ensure_export(run_dir, run)
    metadata = read_metadata(export)
    size = tuple(run["image_size"])
    measured = measurements(run_dir, export, size, args.repeats, args.remeasure)
    log = read_log(run_dir / "log.csv")
    training = run["training"]
    epochs_done, planned = len(log), run["config"]["epochs"]
    info = model_info(arch)
    return {
        "arch": arch,
        "family": info.family,
        "year": info.year,
        "params": metadata["params"],
        "flops": metadata["flops"],
        "image_size": size[0],
        "epochs_done": epochs_done,
        "epochs_planned": planned,
        "stopped": stop_reason(training, epochs_done, planned),
        "train_images_per_s": training["images_per_second_steady"] or training["images_per_second"],
        "train_minutes": round(logged_seconds(run_dir / "log.csv") / 60, 2),
        "target_val_top1": args.target_accuracy,
        "epochs_to_target": epochs_to_reach(log, args.target_accuracy),
        "best_val_top1": best_logged(run_dir / "log.csv"),
        "test_top1": run["metrics"]["top1"],
        "test_top5": run["metrics"]["top5"],
        "latency_ms_batch1": measured["latency_ms_batch1"],
        "images_per_s_batch32": measured["images_per_s_batch32"],
        "export": str(export),
    }


def ensure_export(run_dir: Path, run: dict) -> Path:
    """The run's export; exported now (to the compare's models/) when fit died before exporting."""
    if run.get("export") and (Path(run["export"]) / "metadata.json").is_file():
        return Path(run["export"])
    from training.export import export_run

    path = export_run(run_dir, models_dir=run_dir.parent / "models")
    write_json(run_dir / "run.json", {**run, "export": str(path)})
    return path


def measurements(run_dir: Path, export: Path, size: tuple, repeats: int, again: bool) -> dict:
    """Latency and throughput of ``export``, measured once and kept in measurements.json."""
    path = run_dir / "measurements.json"
    kept = read_json(path)
    if kept and kept["export"] == str(export) and not again:
        return kept
    from service.runtimes import load_tensorflow
    from training.optimize import measure_speed

    speed = measure_speed(load_tensorflow(export), size, repeats=repeats)  # serving_default on uint8
    measured = {
        "export": str(export),
        "latency_ms_batch1": speed["batch1_ms"],
        "images_per_s_batch32": speed["batch32_images_per_s"],
        "repeats": repeats,
        "warmup_calls": WARMUP_CALLS,
        "cpu_count": speed["cpus"],
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(path, measured)  # atomic: a kill while it writes must not break the rerun
    return measured


def epochs_to_reach(log: list[dict], target: float) -> int | None:
    """The first epoch (1-based) whose validation top-1 reached ``target``; None if none did."""
    reached = (epoch for epoch, row in enumerate(log, 1) if (row.get("val_top1") or 0.0) >= target)
    return next(reached, None)


def stop_reason(training: dict, epochs_done: int, planned: int) -> str:
    if epochs_done >= planned:
        return ""
    return "time budget" if training.get("stopped_by_time_limit") else "early stopping"


def summary(row: dict) -> str:
    target = row["target_val_top1"]
    reached = f"epoch {row['epochs_to_target']}" if row["epochs_to_target"] else "no epoch"
    return (
        f"{row['epochs_done']}/{row['epochs_planned']} epochs in {row['train_minutes']:.1f} min "
        f"({cell(row['train_images_per_s'], ',.1f')} images/s), val top-1 >= {target:g} at {reached}; "
        f"test top-1 {row['test_top1']:.4f}, "
        f"top-5 {row['test_top5']:.4f}; batch-1 {row['latency_ms_batch1']:.2f} ms, "
        f"batch-32 {row['images_per_s_batch32']:,.1f} images/s"
    )


def cell(value, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when it was not measured."""
    return "—" if value is None else format(value, spec)


# --------------------------------------------------------------------------- reports


def write_reports(out: Path, rows: list[dict], failed: list[str], args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    (out / "results.md").write_text(markdown(rows, failed, args, out))
    scatter(
        rows,
        "latency_ms_batch1",
        "batch-1 latency of the exported model (ms, log scale)",
        out / "accuracy_vs_latency.png",
        args,
    )
    scatter(
        rows,
        "train_minutes",
        "training time (minutes, log scale)",
        out / "accuracy_vs_training_time.png",
        args,
    )


def markdown(rows: list[dict], failed: list[str], args: argparse.Namespace, out: Path) -> str:
    """results.md: how the figures were obtained, then one table row per architecture."""
    runs = [read_json(out / row["arch"] / "run.json") for row in rows]
    lines = ["# Architecture comparison", "", *header(runs[0] if runs else None, args), ""]
    lines += [
        "| architecture | year | parameters | FLOPs | train images/s | train time (min) | epochs "
        f"| epochs to val top-1 ≥ {args.target_accuracy:g} | test top-1 | test top-5 "
        "| batch-1 latency (ms) | batch-32 images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        epochs = f"{r['epochs_done']}/{r['epochs_planned']}" + (f" ({r['stopped']})" if r["stopped"] else "")
        lines.append(
            f"| {r['arch']} | {r['year']} | {format_count(r['params'])} | {format_count(r['flops'])} "
            f"| {cell(r['train_images_per_s'], ',.1f')} | {r['train_minutes']:.1f} | {epochs} "
            f"| {r['epochs_to_target'] or '—'} | {r['test_top1']:.1%} | {r['test_top5']:.1%} "
            f"| {r['latency_ms_batch1']:.2f} | {r['images_per_s_batch32']:,.1f} |"
        )
    if failed:
        lines += ["", f"Not finished (see their fit.log): {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def header(run: dict | None, args: argparse.Namespace) -> list[str]:
    """Bullet lines: command, machine, data and split, recipe, how speed and latency were measured."""
    budget = f"; time budget {args.time_budget:g} min per architecture" if args.time_budget else ""
    lines = [
        f"- command: `{command_line('compare', command_argv(args))}`",
        f"- machine: {machine()}" + (f"; training device: {run['device']}" if run else ""),
    ]
    if run:
        c, s = run["config"], run["splits"]
        lines += [
            f"- data: {run['dataset']} ({c['data']}), {len(run['labels'])} classes; split "
            f"(seed {c['seed']}): train {s['train']:,}, validation {s['validation']:,}, "
            f"test {s['test']:,} images (test held out, used once per architecture)",
            f"- recipe (every architecture): {c['image_size'][0]}×{c['image_size'][1]} px, {c['epochs']} "
            f"epochs, batch {c['batch_size']}, {c['optimizer']} peak lr {c['learning_rate']:g} "
            f"(warm-up {c['warmup_epochs']:g} epochs, cosine decay), "
            f"weight decay {c['weight_decay'] or 'none'}, label smoothing {c['label_smoothing']:g}, "
            f"augmentation {c['augment']}, early-stopping patience {c['patience'] or 'off'}{budget}",
        ]
    lines += [
        "- train images/s: fit's median epoch after the first (validation pass included); train time: "
        "the epochs in log.csv summed",
        f"- latency / throughput: the exported SavedModel's serving_default on uint8 images at the "
        f"training size, median of {args.repeats} calls after {WARMUP_CALLS} warm-up calls, "
        "TensorFlow's default threads",
        "- FLOPs: multiply-adds for one image at the training size",
    ]
    return lines


def scatter(rows: list[dict], x_key: str, x_label: str, path: Path, args: argparse.Namespace) -> None:
    """Test top-1 against ``x_key``; marker area proportional to parameters; one label per point."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    points = [r for r in rows if r[x_key]]
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    ax = figure.subplots()
    if points:
        largest = max(r["params"] for r in points)
        ax.scatter(
            [r[x_key] for r in points],
            [100 * r["test_top1"] for r in points],
            s=[max(12.0, 1500.0 * r["params"] / largest) for r in points],
            alpha=0.5,
            edgecolors="black",
        )
        for r in points:
            ax.annotate(
                f"{r['arch']} ({format_count(r['params'])})",
                (r[x_key], 100 * r["test_top1"]),
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_xscale("log")
        plain = LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4))  # 30, not 3×10¹
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.margins(x=0.2, y=0.15)  # room for the largest markers and the labels
    ax.set_xlabel(x_label)
    ax.set_ylabel("held-out test top-1 (%)")
    ax.set_title(
        f"{Path(args.data).name}, {args.image_size} px, {args.epochs} epochs, {cpu_count()} CPU cores "
        "(marker area ∝ parameters)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    figure.savefig(path, dpi=120)


def machine() -> str:
    """CPU model, the cores this process may use, and the operating system."""
    return f"{cpu_name()}, {cpu_count()} CPU cores, {platform.system()}"
