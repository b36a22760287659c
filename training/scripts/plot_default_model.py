"""docs/default-model.png: the default model's training curve and the recipe search beside it.

python training/scripts/plot_default_model.py runs/gpu/runs   # folder of fit-packed runs (evaluated)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

V1 = ("v1: ×0.5, light, 45 ep (CPU)", 0.8169, None)  # models/imagenette/1 (git history), no val logged here


def main(runs: Path, default: str = "r18w0625_strong", out: Path = Path("docs/default-model.png")) -> None:
    with open(runs / default / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in log]
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    curve.plot(epochs, [float(r["top1"]) for r in log], label="training top-1 (on MixUp/CutMix batches)")
    curve.plot(epochs, [float(r["loss"]) / 3 for r in log], label="training loss / 3")
    lr = [float(r["learning_rate"]) for r in log]
    curve.plot(epochs, [v / max(lr) for v in lr], ":", label="learning rate (relative)")
    curve.set_xlabel("epoch")
    curve.set_title(f"default model ({default}): {len(log)} epochs, 6,629 images")
    curve.legend(loc="center right", fontsize=8)
    curve.grid(alpha=0.3)

    rows = [V1]
    for run_file in sorted(runs.glob("*/run.json")):
        run = json.loads(run_file.read_text())
        if not run.get("metrics"):
            continue
        c, t = run["config"], run["training"]
        seen = "validation" in run.get("trained_on", [])
        label = f"×{c['arch_options'].get('width', 1)}, {c['augment']}, {t['epochs_run']} ep" + (
            ", train+val" if seen else ""
        )
        rows.append((label, run["metrics"]["top1"], None if seen else run["validation_metrics"]["top1"]))
    y = range(len(rows))
    bars.barh([i + 0.2 for i in y], [r[1] for r in rows], 0.4, label="test top-1 (held out)")
    bars.barh(
        [i - 0.2 for i in y], [r[2] or 0 for r in rows], 0.4, label="validation top-1 (picks the model)"
    )
    bars.set_yticks(list(y), [r[0] for r in rows], fontsize=8)
    bars.axvline(0.9, color="k", ls="--", lw=1, label="target 90%")
    bars.set_xlim(0.75, 0.95)
    bars.set_title("ResNet-18 recipes tried (128 px)")
    bars.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/gpu/runs"))
