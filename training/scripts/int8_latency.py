"""Batch-1 and batch-32 latency of the OpenVINO forms of several exports, side by side in one run.

python training/scripts/int8_latency.py models/imagenette/2 models/imagenette/3 [--form int8]

Each export's ``openvino/<form>`` IR is loaded as the service loads it (``service.runtimes.
load_openvino``: one stream, this process's CPUs, latency first), fed uint8 images at its input
size (real photos resized, or random pixels), and timed in rounds: one call of each model per
round, in turn, so that load from other processes falls on all of them alike. Prints the median
and p90 per model and batch size, and each model's median over the first's (median of the per-round
ratios, robust to background load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from service.runtimes import OPENVINO_PRECISION_HINT, cpu_name, load_openvino

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path)
    parser.add_argument("--form", default="int8", choices=("int8", "fp32"))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    precision = "int8" if args.form == "int8" else "fp32"
    models = []
    for folder in args.exports:
        size = json.loads((folder / "metadata.json").read_text())["input_size"]
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINT[precision]}
        models.append((folder, size, load_openvino(folder / "openvino" / args.form / "model.xml", config)))
    rng = np.random.default_rng(0)
    print(f"{cpu_name()}; OpenVINO {args.form}; {args.rounds} rounds, models in turn")
    for batch in (int(b) for b in args.batches.split(",")):
        inputs = [rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8) for _, (h, w), _ in models]
        for (_, _, predict), x in zip(models, inputs, strict=True):  # warm-up
            for _ in range(3):
                predict(x)
        times = [[] for _ in models]
        for _ in range(args.rounds):
            for i, ((_, _, predict), x) in enumerate(zip(models, inputs, strict=True)):
                start = time.perf_counter()
                predict(x)
                times[i].append(1000 * (time.perf_counter() - start))
        for i, (folder, _, _) in enumerate(models):
            ratio = statistics.median(t / f for t, f in zip(times[i], times[0], strict=True))
            q = statistics.quantiles(times[i], n=10)
            print(
                f"batch {batch:3d}  {str(folder):24s} median {statistics.median(times[i]):8.2f} ms  "
                f"p90 {q[-1]:8.2f} ms  {batch * 1000 / statistics.median(times[i]):7.1f} images/s  "
                f"x{ratio:.2f} of {args.exports[0]}"
            )


if __name__ == "__main__":
    main()
