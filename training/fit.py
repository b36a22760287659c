"""Train a zoo architecture end-to-end on an image dataset, evaluate it on held-out data, export it.

    python -m training fit --arch resnet18 --data /work/shared/data/imagenette2-train \\
        --image-size 128 --epochs 40 --batch-size 64 --optimizer adamw --lr 1e-3 \\
        --warmup-epochs 3 --label-smoothing 0.1 --augment light --mixed-precision

Writes ``runs/<run-name>/``: ``best.keras`` (best validation top-1), ``log.csv``, ``tensorboard/``,
``backup/`` (while unfinished) and ``run.json`` (configuration, labels, command and, at the end, the
held-out test metrics); then exports ``models/<name>/<version>/`` unless ``--no-export``.

Crash-safe: kill it at any moment and run the SAME command again: it resumes from the last finished
epoch (weights, optimizer state and so the learning-rate schedule position, epoch counter; the CSV
log is appended to and the best checkpoint keeps its best-so-far). The early-stopping patience
counter restarts on resume.

Several machines: with ``TF_CONFIG`` naming more than one worker (TensorFlow's standard cluster
description), every worker runs the SAME command and training runs under
``tf.distribute.MultiWorkerMirroredStrategy`` (``--batch-size`` is then the global batch, split over
the workers; the data is sharded by TensorFlow). The chief (``chief`` task, else worker 0) writes
the run folder and the export; every other worker writes its checkpoints, log and backup to
``<run>/workertemp_<index>/`` (TensorFlow's prescription: all workers save, only the chief's copy
is kept), deleted once the run has finished. Resume works as above: restart every worker with its
command and the same ``TF_CONFIG``; each restores its own backup.

``--time-limit MINUTES`` trains on a budget: at the end of an epoch, training stops when the next
epoch (as long as the last) would end past the limit; the epochs of earlier sessions of a resumed
run count (``log.csv`` records every epoch's ``epoch_seconds``). The best checkpoint is then
evaluated and exported as usual, and ``run.json`` says the time limit stopped it.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import keras

from training import distribute, finetune
from training.cli import command_line
from training.end_to_end import Augmentation
from training.kit import Session, compile_model
from training.quiet import progress_verbosity
from training.recipe import Recipe
from training.runs import (
    RunStateError,
    best_logged,
    build_model,
    check_run_dir,
    check_worker_dir,
    load_checkpoint,
    new_run,
    write_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    Recipe.add_arguments(parser)  # every field of the Recipe is a flag


def main(args: argparse.Namespace) -> int:
    try:
        run = fit(Recipe.from_args(args))
    except RunStateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if run["metrics"] else 1


def fit(recipe: Recipe) -> dict:
    """Train, evaluate and export as ``recipe`` says; returns the final ``run.json`` contents."""
    strategy, device = distribute.choose_strategy()  # first: MultiWorkerMirroredStrategy precedes any TF op
    chief, task = distribute.is_chief(), distribute.task_index()
    config = recipe.config()
    run_dir = Path(recipe.runs_dir) / config["run_name"]
    # Where this worker writes: the run folder on the chief, a folder of its own on other workers.
    work_dir = run_dir if chief else run_dir / f"workertemp_{task}"
    resuming = check_run_dir(run_dir, config) if chief else check_worker_dir(work_dir)
    keras.utils.set_random_seed(recipe.seed)
    set_precision(recipe.mixed_precision)
    precision = keras.mixed_precision.global_policy().name
    print(f"device: {device}; precision: {precision}")

    data, batches = load_batches(recipe, config, strategy)
    steps_per_epoch = math.ceil(data.sizes["train"] / recipe.batch_size)
    with strategy.scope():
        model = build_model(config, data.num_classes)
        finetune.start_head(model, config, data.class_ids)
        compile_model(model, config, steps_per_epoch)
    print(
        f"model {model.name}: {model.count_params():,} parameters; {steps_per_epoch} steps per epoch; "
        f"peak learning rate {config['learning_rate']:g}"
    )

    command = command_line("fit", recipe.to_argv())
    run = new_run(config, data.labels, data.class_ids, data.name, data.sizes, device, precision, command)
    if chief:
        write_json(run_dir / "run.json", run)

    session = Session(config, work_dir, resuming, patience=recipe.patience, time_limit=recipe.time_limit)
    session.fit(
        model,
        batches["train"],
        validation_data=batches["validation"],
        epochs=recipe.epochs,
        shuffle=False,  # the tf.data pipeline shuffles (Keras cannot shuffle a dataset itself)
        verbose=progress_verbosity(),  # progress bars on a terminal only (training.quiet)
    )

    with strategy.scope():
        best = load_checkpoint(work_dir / "best.keras")
    scores = best.evaluate(batches["test"], return_dict=True, verbose=0)
    run["metrics"] = {key: float(scores[key]) for key in ("top1", "top5", "loss")}
    run["training"] = session.record(data.sizes["train"], best_val_top1=best_logged(work_dir / "log.csv"))
    if not chief:  # the chief keeps the run; this worker's copy was only for the collectives
        shutil.rmtree(work_dir, ignore_errors=True)
        print_summary(run)
        print(f"worker {task} done (the chief writes the run folder and the export)")
        return run
    write_json(run_dir / "run.json", run)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    print_summary(run)
    if session.stopped_by_time_limit:
        last_epoch = session.history.epoch[-1] + 1
        print(f"stopped by --time-limit {recipe.time_limit:g} min after epoch {last_epoch}/{recipe.epochs}")
    if not recipe.no_export:  # (the chief only: other workers returned above)
        export(recipe, run, run_dir, best, data)
    return run


def load_batches(recipe: Recipe, config: dict, strategy) -> tuple:
    """The data (``training.data.Data``) and its batches per split, sharded over the workers."""
    from training.data import SplitFractions, load_data  # TensorFlow (tf.data) from here on

    fractions = SplitFractions(recipe.validation_fraction, recipe.test_fraction, recipe.seed)
    data = load_data(
        recipe.data,
        config["image_size"],
        fractions=fractions,
        labels_map=recipe.labels_map,
        limit=recipe.limit,
    )
    print(data.describe())
    augmentation = Augmentation(**config["augmentation"])
    batches = data.batches(recipe.batch_size, augmentation, seed=recipe.seed)
    if distribute.is_multi_worker(strategy):
        batches = {split: distribute.shard_by_data(ds) for split, ds in batches.items()}
    return data, batches


def export(recipe: Recipe, run: dict, run_dir: Path, best: keras.Model, data) -> None:
    """Export the evaluated best checkpoint and (unless ``--no-optimize``) its faster forms."""
    from training.export import export_trained

    finish = None
    if not recipe.no_optimize:  # the forms are written before the version is published
        from training.optimize import held_out_from_data, optimize_after_export

        def finish(folder: Path, final: Path) -> None:
            optimize_after_export(folder, lambda: held_out_from_data(data, seed=recipe.seed), shown=final)

    path = export_trained(best, run, run_dir, models_dir=recipe.models_dir, finish=finish)
    run["export"] = str(path)
    write_json(run_dir / "run.json", run)
    print(f"exported to {path}")


def set_precision(mixed: bool) -> bool:
    """Set the global policy; mixed_float16 only where a GPU runs it (returns whether it is on)."""
    import tensorflow as tf

    if mixed and not tf.config.list_physical_devices("GPU"):
        print("note: --mixed-precision needs a GPU; training in float32")
        mixed = False
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    return mixed


def print_summary(run: dict) -> None:
    t, m = run["training"], run["metrics"]
    speed = f"{t['images_per_second']:,.1f} images/s" if t["images_per_second"] else "no epoch run"
    if t["images_per_second_steady"]:
        speed += f", {t['images_per_second_steady']:,.1f} after the first epoch"
    print(
        f"\n{run['arch']} on {run['dataset']} ({run['image_size'][0]}px): {t['epochs_run']} epochs in "
        f"{t['seconds']:,.0f} s ({speed}); held-out test top-1 {m['top1']:.4f}, top-5 {m['top5']:.4f} "
        f"on {run['splits']['test']:,} images"
    )
