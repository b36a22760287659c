"""Batch latency of zoo backbones on this machine, next to keras.applications references.

    python -m benchmarks.zoo_latency                                  # ConvNeXt-T vs ResNet-50
    python -m benchmarks.zoo_latency --models convnext_tiny,keras:ConvNeXtTiny,mobilenet_v2
    python -m benchmarks.zoo_latency --batch 8 --size 160 --repeats 100

A model is a registry name (``convnext_tiny``) or ``keras:<Constructor>`` for a
keras.applications model (``keras:ConvNeXtTiny``), built with random weights and without its
baked-in preprocessing layers, so that every entry is a bare backbone + classifier. The default
set is our ``convnext_tiny``, keras' ``ConvNeXtTiny`` and the ResNet-50 reference: our
``resnet50`` when the registry has it, else ``keras:ResNet50``.

Every model is called the same way: a compiled ``tf.function`` running ``model(x,
training=False)`` on one fixed random float32 batch, the result fetched to numpy. After
``--warmup`` untimed calls each, the models are timed in rounds (one call of each model per
round, in turn), so that load from other processes falls on all of them alike. Reported: the
median and p90 latency per model, and ConvNeXt-T / ResNet-50 as the median of the per-round
ratios (robust to background load) next to the ratio of the medians.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

CONVNEXT = "convnext_tiny"
RESNET = "resnet50"
KERAS_PREFIX = "keras:"


@dataclass(frozen=True)
class Result:
    """Latencies (ms) of one model, one entry per timed round."""

    model: str
    params: int
    times_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.times_ms, n=10)[-1]


def resnet_reference() -> str:
    """Our ResNet-50 once the registry has it, else keras.applications'."""
    from training.architectures import list_models

    return RESNET if RESNET in list_models() else f"{KERAS_PREFIX}ResNet50"


def default_models() -> list[str]:
    return [CONVNEXT, f"{KERAS_PREFIX}ConvNeXtTiny", resnet_reference()]


def build(spec: str, size: int):
    """A registry model or a keras.applications one (random weights, no preprocessing layers)."""
    import keras

    from training.architectures import create_model

    shape = (size, size, 3)
    if not spec.startswith(KERAS_PREFIX):
        return create_model(spec, num_classes=1000, input_shape=shape)
    constructor_name = spec.removeprefix(KERAS_PREFIX)
    constructor = getattr(keras.applications, constructor_name, None)
    if constructor is None:
        raise SystemExit(f"keras.applications has no {constructor_name!r}")
    kwargs = {"weights": None, "input_shape": shape, "classes": 1000}
    if "include_preprocessing" in inspect.signature(constructor).parameters:
        kwargs["include_preprocessing"] = False
    return constructor(**kwargs)


def time_models(specs: list[str], *, batch: int, size: int, warmup: int, repeats: int) -> list[Result]:
    """Build each model, warm it up, then time ``repeats`` rounds of one call per model."""
    import numpy as np
    import tensorflow as tf

    pixels = np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)).astype("float32")
    x = tf.constant(pixels)
    calls, params = {}, {}
    for spec in specs:
        print(f"building {spec} ...", file=sys.stderr, flush=True)
        model = build(spec, size)
        params[spec] = model.count_params()
        calls[spec] = tf.function(lambda images, m=model: m(images, training=False))
        for _ in range(warmup):
            calls[spec](x).numpy()
    times = {spec: [] for spec in specs}
    for _ in range(repeats):
        for spec in specs:
            start = time.perf_counter()
            calls[spec](x).numpy()
            times[spec].append((time.perf_counter() - start) * 1000)
    return [Result(spec, params[spec], times[spec]) for spec in specs]


def ratio(results: list[Result], numerator: str, denominator: str) -> tuple[float, float] | None:
    """(median of per-round ratios, ratio of medians), or None if either model was not timed."""
    by_name = {r.model: r for r in results}
    if numerator not in by_name or denominator not in by_name:
        return None
    top, bottom = by_name[numerator], by_name[denominator]
    per_round = statistics.median(a / b for a, b in zip(top.times_ms, bottom.times_ms, strict=True))
    return per_round, top.median / bottom.median


def report(results: list[Result], args) -> str:
    cpus = len(os.sched_getaffinity(0))
    lines = [
        f"batch {args.batch}, {args.size}x{args.size} px, random weights; {args.warmup} warm-up "
        f"calls, {args.repeats} timed rounds; {cpus} CPUs ({platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| model | parameters | median ms | p90 ms |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.model} | {r.params:,} | {r.median:.1f} | {r.p90:.1f} |")
    resnets = [r.model for r in results if r.model in (RESNET, f"{KERAS_PREFIX}ResNet50")]
    ratios = [
        (convnext, resnets[0], ratio(results, convnext, resnets[0]))
        for convnext in (CONVNEXT, f"{KERAS_PREFIX}ConvNeXtTiny")
        if resnets and ratio(results, convnext, resnets[0])
    ]
    if ratios:
        lines.append("")
    for top, bottom, (per_round, of_medians) in ratios:
        lines.append(
            f"{top} / {bottom}: {per_round:.2f} (median of per-round ratios), "
            f"{of_medians:.2f} (ratio of medians)"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names or keras:<Constructor>")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per model")
    parser.add_argument("--repeats", type=int, default=40, help="timed rounds")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (medians and percentiles need two rounds)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    specs = args.models.split(",") if args.models else default_models()
    results = time_models(specs, batch=args.batch, size=args.size, warmup=args.warmup, repeats=args.repeats)
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
