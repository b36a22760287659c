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
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import keras

from training import finetune
from training.backup import CrashSafeBackup, CrashSafeCheckpoint
from training.cli import command_line
from training.end_to_end import Augmentation
from training.quiet import progress_verbosity
from training.recipe import OPTIMIZERS, Recipe, parse_options  # noqa: F401  (fit's API too)
from training.runs import (  # noqa: F401  (build_model, float32_model, RunStateError: fit's API too)
    MONITOR,
    RunStateError,
    best_logged,
    build_model,
    check_run_dir,
    check_worker_dir,
    float32_model,
    logged_seconds,
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
    strategy, device = choose_strategy()  # first: MultiWorkerMirroredStrategy precedes any TF op
    chief, task = is_chief(), task_index()
    config = recipe.config()
    run_dir = Path(recipe.runs_dir) / config["run_name"]
    # Where this worker writes: the run folder on the chief, a folder of its own on other workers.
    work_dir = run_dir if chief else run_dir / f"workertemp_{task}"
    resuming = check_run_dir(run_dir, config) if chief else check_worker_dir(work_dir)
    keras.utils.set_random_seed(recipe.seed)
    set_precision(recipe.mixed_precision)
    precision = keras.mixed_precision.global_policy().name
    print(f"device: {device}; precision: {precision}")

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
    if is_multi_worker(strategy):
        batches = {split: shard_by_data(ds) for split, ds in batches.items()}
    steps_per_epoch = math.ceil(data.sizes["train"] / recipe.batch_size)

    with strategy.scope():
        model = build_model(config, data.num_classes)
        compile_model(model, config, steps_per_epoch)
    print(
        f"model {model.name}: {model.count_params():,} parameters; {steps_per_epoch} steps per epoch; "
        f"peak learning rate {config['learning_rate']:g}"
    )

    run = new_run(
        config,
        data.labels,
        data.class_ids,
        data.name,
        data.sizes,
        device,
        precision,
        command_line("fit", recipe.to_argv()),
    )
    if chief:
        write_json(run_dir / "run.json", run)

    stats = EpochStats()
    callbacks = [stats, *finetune.callbacks(config), *make_callbacks(work_dir, resuming, recipe.patience)]
    time_limit = time_limit_callback(work_dir, resuming, recipe.time_limit)
    if time_limit:
        callbacks.append(time_limit)
    start = time.perf_counter()
    history = model.fit(
        batches["train"],
        validation_data=batches["validation"],
        epochs=recipe.epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles (Keras cannot shuffle a dataset itself)
        verbose=progress_verbosity(),  # progress bars on a terminal only (training.quiet)
    )
    seconds = time.perf_counter() - start
    epochs_run = len(history.epoch)

    with strategy.scope():
        best = keras.models.load_model(work_dir / "best.keras")
    scores = best.evaluate(batches["test"], return_dict=True, verbose=0)
    run["metrics"] = {key: float(scores[key]) for key in ("top1", "top5", "loss")}
    run["training"] = {
        "epochs_run": epochs_run,  # in this session (after a resume: since the resume)
        "first_epoch": history.epoch[0] + 1 if epochs_run else None,
        "seconds": round(seconds, 1),
        "images_per_second": round(epochs_run * data.sizes["train"] / seconds, 1) if epochs_run else None,
        "images_per_second_steady": stats.steady_speed(data.sizes["train"]),
        "best_val_top1": best_logged(work_dir / "log.csv"),
        "time_limit_minutes": recipe.time_limit,
        "stopped_by_time_limit": bool(time_limit and time_limit.stopped),
    }
    if not chief:  # the chief keeps the run; this worker's copy was only for the collectives
        shutil.rmtree(work_dir, ignore_errors=True)
        print_summary(run)
        print(f"worker {task} done (the chief writes the run folder and the export)")
        return run
    write_json(run_dir / "run.json", run)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    print_summary(run)
    if run["training"]["stopped_by_time_limit"]:
        last_epoch = history.epoch[-1] + 1
        print(f"stopped by --time-limit {recipe.time_limit:g} min after epoch {last_epoch}/{recipe.epochs}")

    if not recipe.no_export:  # (the chief only: other workers returned above)
        from training.export import export_trained

        path = export_trained(best, run, run_dir, models_dir=recipe.models_dir)
        run["export"] = str(path)
        write_json(run_dir / "run.json", run)
        print(f"exported to {path}")
        if not recipe.no_optimize:
            from training.optimize import held_out_from_data, optimize_after_export

            optimize_after_export(path, lambda: held_out_from_data(data, seed=recipe.seed))
    return run


def run_config(args: argparse.Namespace) -> dict:
    """Everything that defines the run, as plain JSON data (compared on resume): ``Recipe.config``."""
    return Recipe.from_args(args).config()


def tf_config() -> dict:
    """``TF_CONFIG`` parsed (``{}`` when unset): ``{"cluster": {"worker": [...], "chief": [...]},
    "task": {"type": "worker", "index": 0}}``."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def cluster_workers(config: dict | None = None) -> int:
    """How many training processes TF_CONFIG names (chief and workers; 0 without TF_CONFIG)."""
    cluster = (tf_config() if config is None else config).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def is_chief() -> bool:
    """Whether this process writes the run: the ``chief`` task, else worker 0, else a lone process."""
    config = tf_config()
    task = config.get("task", {})
    if cluster_workers(config) <= 1 or task.get("type") == "chief":
        return True
    return (
        "chief" not in config.get("cluster", {}) and task.get("type") == "worker" and task.get("index") == 0
    )


def task_index() -> int:
    return int(tf_config().get("task", {}).get("index", 0))


def is_multi_worker(strategy: Any) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def shard_by_data(dataset: Any) -> Any:
    """Shard a dataset over the workers element by element (``DATA``): the folder pipelines read
    files from a list of paths, which TensorFlow's default (try ``FILE``, then fall back) would
    only warn about."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _keras_multi_worker_strategy(tf: Any) -> type:
    """``tf.distribute.MultiWorkerMirroredStrategy``, made to work with Keras 3's ``fit``.

    Keras 3 (3.15, TensorFlow backend) calls ``strategy.reduce`` in two ways that
    ``MultiWorkerMirroredStrategy`` refuses (keras-team/keras#20585, open):

    - before the first step (``_maybe_symbolic_build``) on the whole first batch, a tuple of
      per-replica tensors, to learn the shapes it builds the metrics with: the strategy reduces one
      tensor, not a structure ("Attempt to convert a value (PerReplica ...)"), and collective ops
      cannot reduce uint8 images at all;
    - after every step (``reduce_per_replica``) on each scalar metric with ``axis=0``, an axis a
      scalar does not have ("Invalid reduction dimension 0").

    This subclass reduces a structure tensor by tensor; a tensor of a type collective ops cannot
    reduce gives this worker's own value (all Keras uses it for: shapes and dtypes); a scalar is
    reduced across the workers without the axis (within one replica a scalar is its own mean).
    Everything else reduces exactly as before.
    """
    reducible = {tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64}

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            reduce_one = super().reduce

            def one(v: Any) -> Any:
                local = self.experimental_local_results(v)[0]
                if local.dtype not in reducible:
                    return local
                if axis is not None and local.shape.rank == 0:
                    return reduce_one(reduce_op, v, None)
                return reduce_one(reduce_op, v, axis)

            return tf.nest.map_structure(one, value)

    return KerasMultiWorkerMirroredStrategy


def choose_strategy() -> tuple[Any, str]:  # (tf.distribute.Strategy, description)
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers; else MirroredStrategy over
    several GPUs, else the default strategy; and a description."""
    import tensorflow as tf

    workers = cluster_workers()
    if workers > 1:
        task = tf_config().get("task", {})
        strategy = _keras_multi_worker_strategy(tf)()
        role = "chief" if is_chief() else "worker"
        return strategy, (
            f"MultiWorkerMirroredStrategy over {workers} workers ({strategy.num_replicas_in_sync} "
            f"replicas); this is {task.get('type')} {task.get('index')} ({role})"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"MirroredStrategy over {len(gpus)} GPUs"
    where = "1 GPU" if gpus else f"CPU ({os.cpu_count()} cores)"
    return tf.distribute.get_strategy(), f"default strategy on {where}"


def set_precision(mixed: bool) -> bool:
    """Set the global policy; mixed_float16 only where a GPU runs it (returns whether it is on)."""
    import tensorflow as tf

    if mixed and not tf.config.list_physical_devices("GPU"):
        print("note: --mixed-precision needs a GPU; training in float32")
        mixed = False
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    return mixed


def learning_rate_schedule(config: dict, steps_per_epoch: int) -> keras.optimizers.schedules.CosineDecay:
    """Linear warm-up from 0 to the peak rate, then cosine decay to 0 at the last step."""
    total = max(1, config["epochs"] * steps_per_epoch)
    warmup = min(total - 1, round(config["warmup_epochs"] * steps_per_epoch))
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - warmup, warmup_target=config["learning_rate"], warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(config["learning_rate"], decay_steps=total)


def make_optimizer(config: dict, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, AdamW, SGD (momentum 0.9, Nesterov) or RMSprop (rho 0.9, momentum 0.9, eps 1e-3)."""
    lr = learning_rate_schedule(config, steps_per_epoch)
    decay = config["weight_decay"] or None
    # The Keras class, or with --weights its two-rate subclass (training.finetune).
    cls, extra = finetune.optimizer_class(config, config["optimizer"])
    optimizer = {
        "adam": lambda: cls(lr, weight_decay=decay, **extra),
        "adamw": lambda: cls(lr, weight_decay=decay or 0.0, **extra),
        "sgd": lambda: cls(lr, momentum=0.9, nesterov=True, weight_decay=decay, **extra),
        "rmsprop": lambda: cls(lr, rho=0.9, momentum=0.9, epsilon=1e-3, weight_decay=decay, **extra),
    }[config["optimizer"]]()
    if decay:
        # No decay on biases and normalization scales/offsets (the usual practice since Goyal et al.).
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model: keras.Model, config: dict, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        **loss_and_metrics(config),
        jit_compile={"auto": "auto", "on": True, "off": False}[config["jit_compile"]],
    )
    finetune.prepare(model, config)  # with --weights: the head, the optimizer, epoch 0's phase


def loss_and_metrics(config: dict) -> dict:
    """``compile`` arguments: the training loss (label smoothing included), top-1 and top-5."""
    return {
        "loss": keras.losses.CategoricalCrossentropy(label_smoothing=config.get("label_smoothing", 0.0)),
        "metrics": [
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
        ],
    }


def make_callbacks(
    run_dir: Path, resuming: bool, patience: int, *, validated: bool = True, tensorboard: bool = True
) -> list[keras.callbacks.Callback]:
    """Checkpoint, CSV log, TensorBoard, early stopping, and the backup (last: it saves the epoch
    only after the others have written theirs). Without a validation pass (``validated=False``)
    there is no best checkpoint and no early stopping; ``tensorboard=False`` where TensorFlow,
    which writes the event files, is absent."""
    callbacks: list[keras.callbacks.Callback] = []
    if validated:
        callbacks.append(
            CrashSafeCheckpoint(  # keras' ModelCheckpoint, written aside and renamed (training.backup)
                run_dir / "best.keras",
                monitor=MONITOR,
                mode="max",
                save_best_only=True,
                initial_value_threshold=best_logged(run_dir / "log.csv") if resuming else None,
            )
        )
    callbacks.append(keras.callbacks.CSVLogger(run_dir / "log.csv", append=resuming))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "tensorboard"))
    if validated and patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    callbacks.append(CrashSafeBackup(run_dir / "backup"))  # survives a kill at any instant (training.backup)
    return callbacks


def time_limit_callback(run_dir: Path, resuming: bool, minutes: float | None) -> TimeLimit | None:
    """``--time-limit``'s callback (counting the training time of earlier sessions), or None."""
    if minutes is None:
        return None
    return TimeLimit(minutes * 60, spent=logged_seconds(run_dir / "log.csv") if resuming else 0.0)


class EpochStats(keras.callbacks.Callback):
    """Times each epoch (training + validation) and adds its duration and the learning rate reached
    at its end to the epoch's logs, so that log.csv and TensorBoard show them. Must run before them."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        if logs is not None:
            logs["epoch_seconds"] = round(self.seconds[-1], 3)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def steady_speed(self, images_per_epoch: int) -> float | None:
        """Training images per second of the median epoch after the first (which compiles)."""
        later = sorted(self.seconds[1:])
        return round(images_per_epoch / later[len(later) // 2], 1) if later else None


class TimeLimit(keras.callbacks.Callback):
    """Stops training at the end of an epoch when one more epoch, as long as the last, would end
    past ``seconds``; ``spent`` is the training time of earlier sessions. ``stopped`` tells whether
    it cut the training short."""

    def __init__(self, seconds: float, spent: float = 0.0):
        super().__init__()
        self.seconds, self.spent, self.stopped = seconds, spent, False

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        last = time.perf_counter() - self._start
        self.spent += last
        if epoch + 1 < self.params["epochs"] and self.spent + last > self.seconds:
            self.model.stop_training = True
            self.stopped = True


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
