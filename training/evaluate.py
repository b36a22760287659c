"""Evaluate a run's checkpoint on its validation and held-out test splits, and record the figures.

    python -m training evaluate runs/RUN --data ../shared/data/imagenette2-train
    python -m training export runs/RUN --name imagenette

For runs trained elsewhere (``python -m training fit-packed`` on a GPU machine that never saw the
test images): the folder is split again exactly as the run's config says (fractions and seed), the
checkpoint ``best.keras`` is evaluated on the validation and test splits through fit's own tf.data
pipeline, and ``run.json`` gets ``metrics`` (test: top1, top5, loss) and ``validation_metrics``, which
is what ``python -m training export`` needs. Refuses data whose classes differ from the run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("run_dir", type=Path, help="a run folder with best.keras and run.json")
    p("--data", help="the run's data folder (default: the one its config names)")
    p("--batch-size", type=int, default=64)


def main(args: argparse.Namespace) -> int:
    try:
        run = evaluate_run(args.run_dir, data=args.data, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    v, t = run["validation_metrics"], run["metrics"]
    seen = " (trained on)" if "note" in v else ""
    print(
        f"{args.run_dir}: validation{seen} top-1 {v['top1']:.4f} top-5 {v['top5']:.4f} "
        f"({run['splits']['validation']:,} images); test top-1 {t['top1']:.4f} top-5 {t['top5']:.4f} "
        f"({run['splits']['test']:,} images)"
    )
    return 0


def evaluate_run(run_dir: str | Path, *, data: str | None = None, batch_size: int = 64) -> dict:
    from training.data import SplitFractions, load_data
    from training.kit import loss_and_metrics
    from training.recipe import Recipe
    from training.runs import load_checkpoint, read_run, write_json

    run_dir = Path(run_dir)
    run, checkpoint = read_run(run_dir)
    recipe = Recipe.from_config(run["config"])  # the split and the loss as trained
    fractions = SplitFractions(recipe.validation_fraction, recipe.test_fraction, recipe.seed)
    dataset = load_data(
        data or recipe.data, run["config"]["image_size"], fractions=fractions, labels_map=recipe.labels_map
    )
    if list(dataset.class_ids) != list(run["class_ids"]):
        raise ValueError(f"the data's classes {dataset.class_ids} are not the run's {run['class_ids']}")
    model = load_checkpoint(checkpoint, compile=False)
    model.compile(**loss_and_metrics(dataclasses.asdict(recipe)))  # the loss as trained, top-1 and top-5
    batches = dataset.batches(batch_size, None, seed=recipe.seed)
    scores = {}
    for split in ("validation", "test"):
        result = model.evaluate(batches[split], return_dict=True, verbose=0)
        scores[split] = {key: float(result[key]) for key in ("top1", "top5", "loss")}
    run["validation_metrics"] = scores["validation"]
    run["metrics"] = scores["test"]
    trained_on = run.get("trained_on", ["train"])
    run["splits"] = {**run.get("splits", {}), **dataset.sizes}
    if "validation" in trained_on:  # a final run on train + validation: only the test split is unseen
        run["validation_metrics"]["note"] = "the validation split was trained on"
        run["splits"]["train"] += run["splits"]["validation"]
    write_json(run_dir / "run.json", run)
    return run
