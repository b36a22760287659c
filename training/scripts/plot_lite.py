"""docs/lite-scratch-vs-imagenet.png: EfficientNet-Lite0 on Imagenette on this CPU, validation top-1
against training time, from scratch and from ImageNet weights (README, "Start from ImageNet").

python training/scripts/plot_lite.py LABEL=runs/NAME/log.csv ... [--out docs/lite-scratch-vs-imagenet.png]

Each curve: one run's log.csv (``epoch_seconds`` summed: the training time ``--time-limit`` counts,
validation included), a point per epoch; ``LABEL@START`` adds a point at 0 s (a top-1 measured
before training, e.g. chance: ``from scratch@0.1``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def curve(log: Path) -> tuple[list[float], list[float]]:
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    minutes, top1, total = [], [], 0.0
    for row in rows:
        total += float(row["epoch_seconds"])
        minutes.append(total / 60)
        top1.append(100 * float(row["val_top1"]))
    return minutes, top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=LOG_CSV")
    parser.add_argument("--out", type=Path, default=Path("docs/lite-scratch-vs-imagenet.png"))
    parser.add_argument("--title", default="EfficientNet-Lite0 on Imagenette, 160 px, 2 CPU cores")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for item in args.runs:
        label, _, path = item.partition("=")
        label, _, start = label.partition("@")
        minutes, top1 = curve(Path(path))
        if start:
            minutes, top1 = [0.0, *minutes], [100 * float(start), *top1]
        ax.plot(minutes, top1, "o-", label=label)
    ax.set_xlabel("training time (minutes, this machine)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
