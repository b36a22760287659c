"""List the architecture zoo with parameters and FLOPs, or print one model's layer summary.

python -m training zoo                      # every architecture at its reference size
python -m training zoo --pattern 'resnet*'  # a subset
python -m training zoo --size 128           # parameters / FLOPs at 128x128 instead
python -m training zoo summary convnext_tiny
"""

from __future__ import annotations

import argparse
import sys
import time

import keras

from training.architectures import create_model, list_models, model_info
from training.flops import count_flops, format_count


def zoo_rows(pattern: str = "*", size: int | None = None, num_classes: int = 1000, progress=None):
    """Yield one dict per registered architecture: name, family, year, input, params, flops."""
    for name in list_models(pattern):
        info = model_info(name)
        shape = info.input_shape if size is None else (size, size, info.input_shape[2])
        if progress:
            progress(name)
        model = create_model(name, num_classes=num_classes, input_shape=shape)
        yield {
            "name": name,
            "family": info.family,
            "year": info.year,
            "input": f"{shape[0]}x{shape[1]}x{shape[2]}",
            "params": model.count_params(),
            "flops": count_flops(model),
            "keras_twin": info.keras_application or "",
        }
        keras.backend.clear_session()


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| architecture | family | year | input | parameters | FLOPs (multiply-adds) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['family']} | {r['year']} | {r['input']} "
            f"| {r['params']:,} | {format_count(r['flops'])} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["list", "summary"], default="list")
    parser.add_argument("name", nargs="?", help="architecture for `summary`")
    parser.add_argument("--pattern", default="*", help="shell pattern over names (default: all)")
    parser.add_argument("--size", type=int, help="square input size instead of each reference size")
    parser.add_argument("--num-classes", type=int, default=1000)


def main(args: argparse.Namespace) -> int:
    if args.action == "summary":
        if not args.name:
            print("usage: python -m training zoo summary NAME", file=sys.stderr)
            return 2
        info = model_info(args.name)
        shape = info.input_shape if args.size is None else (args.size, args.size, info.input_shape[2])
        model = create_model(args.name, num_classes=args.num_classes, input_shape=shape)
        model.summary(expand_nested=True)
        print(f"{args.name}: {info.paper} ({info.year})")
        print(f"FLOPs at {shape}: {format_count(count_flops(model))} multiply-adds")
        return 0

    names = list_models(args.pattern)
    if not names:
        print(f"no architecture matches {args.pattern!r}", file=sys.stderr)
        return 1
    start = time.perf_counter()

    def progress(name: str) -> None:
        done = len(rows)
        print(f"\r[{done}/{len(names)}] building {name:<24}", end="", file=sys.stderr, flush=True)

    rows: list[dict] = []
    terminal = sys.stderr.isatty()  # the "[3/34] building ..." line: on a terminal only
    try:
        for row in zoo_rows(args.pattern, args.size, args.num_classes, progress if terminal else None):
            rows.append(row)
    finally:  # an error (a --size too small for one of them) is printed on a clean line
        if terminal:
            print(f"\r{' ' * 60}\r", end="", file=sys.stderr)
    print(markdown_table(rows))
    print(
        f"\n{len(rows)} architectures, {args.num_classes} classes; FLOPs are multiply-adds for one "
        f"image (TF profiler count / 2). Built in {time.perf_counter() - start:.0f} s.",
    )
    return 0
