"""Train from a packed dataset on any Keras 3 backend (JAX, PyTorch, TensorFlow): no tf.data needed.

    python -m training pack --data ../shared/data/imagenette2-train --image-size 128 --splits train \\
        --out packs/imagenette2-train_128px.npz                            # here, with TensorFlow
    KERAS_BACKEND=jax python -m training fit-packed --data packs/imagenette2-train_128px.npz \\
        --arch resnet18 --width 0.5 --epochs 200 --batch-size 256 --mixed-precision ...   # a GPU machine
    python -m training evaluate runs/RUN --data ../shared/data/imagenette2-train     # here: val + test
    python -m training export runs/RUN --name imagenette

For a GPU machine that has JAX or PyTorch but no TensorFlow. It takes ``python -m training fit``'s
flags and builds the same run from them: the same end-to-end model (``runs.build_model``, Keras'
augmentation layers inside it), optimizer, learning-rate schedule, label smoothing and metrics
(``training.kit``), CSV log, time limit and crash safety (``training.backup``: run the same
command again to resume). What differs is the input: the pack's images, decoded once into memory
(already at the training size, so the model's resize is the identity), shuffled every epoch, with
MixUp / CutMix by the same Keras layers as ``fit`` (``training.mixing``), applied to NumPy batches.

The pack normally holds the training split only, so there is no validation pass and no best
checkpoint: ``best.keras`` holds the final epoch's weights (the learning rate has decayed to zero
by then), in float32 and without optimizer state. ``--mixed-precision`` trains in bfloat16.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np

from service.config import cpu_count
from training import finetune
from training.cli import command_line, options_argv
from training.end_to_end import Augmentation
from training.kit import Session, compile_model
from training.mixing import batch_mixers, mix_one
from training.pack import Pack
from training.quiet import progress_verbosity
from training.recipe import Recipe
from training.runs import RunStateError, build_model, check_run_dir, float32_model, new_run, write_json

DEFAULTS = {"workers": min(8, cpu_count()), "train_splits": "train"}  # fit-packed's own flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    Recipe.add_arguments(parser)  # the Recipe's flags, as fit's
    parser.add_argument("--workers", type=int, default=DEFAULTS["workers"], help="batch threads")
    parser.add_argument(
        "--train-splits",
        default=DEFAULTS["train_splits"],
        help="packed splits to train on, comma-separated (train,validation: once a recipe is chosen)",
    )


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # a kill saves the weights too (see fit_packed)
    try:
        run = fit_packed(Recipe.from_args(args), workers=args.workers, train_splits=args.train_splits)
    except (RunStateError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if run.get("training") else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Batches(keras.utils.PyDataset):
    """Shuffled training batches of a packed split: (float32 images, one-hot labels), mixed or not.

    Every batch is full (the remainder of an epoch's shuffle is left out, a different few images
    each epoch), so JAX compiles the training step for one shape only.
    """

    def __init__(self, images, labels, num_classes, batch_size, augmentation: Augmentation, seed, workers):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers)
        self.images, self.labels = images, labels
        self.num_classes, self.batch_size, self.augmentation = num_classes, batch_size, augmentation
        self.seed, self.epoch = seed, 0
        self.order = np.random.default_rng(seed).permutation(len(images))

    def __len__(self) -> int:  # full batches only: one input shape, one compiled step
        return max(1, len(self.images) // self.batch_size)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.images))

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        images = self.images[rows].astype(np.float32)
        labels = np.eye(self.num_classes, dtype=np.float32)[self.labels[rows]]
        if self.augmentation.mixes_batches:  # the layers fit uses (training.mixing), seeded per batch
            rng = np.random.default_rng((self.seed, self.epoch, index))
            seed = int(rng.integers(2**31 - 2))
            mixers = batch_mixers(self.augmentation.mixup, self.augmentation.cutmix, seed)
            mixed = mix_one(mixers, images, labels, float(rng.random()))
            images, labels = (keras.ops.convert_to_numpy(x) for x in mixed)
        return images, labels


def fit_packed(recipe: Recipe, *, workers: int = DEFAULTS["workers"], train_splits: str = "train") -> dict:
    """Train as ``recipe`` says from its pack (``recipe.data``); returns the ``run.json`` contents."""
    own = {"workers": workers, "train_splits": train_splits}
    pack = Pack(recipe.data)
    config = pack_config(recipe, pack, train_splits)
    train_splits = config["train_splits"]
    run_dir = Path(recipe.runs_dir) / config["run_name"]
    resuming = check_run_dir(run_dir, config)
    keras.utils.set_random_seed(recipe.seed)
    if recipe.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    precision = keras.mixed_precision.global_policy().name
    device = describe_device()
    print(f"backend: {keras.backend.backend()}; device: {device}; precision: {precision}")

    start = time.perf_counter()
    images = np.concatenate([pack.images(name, limit=recipe.limit) for name in train_splits])
    labels = np.concatenate([pack.labels_of(name)[: recipe.limit] for name in train_splits])
    seconds = time.perf_counter() - start
    print(f"decoded {len(images):,} training images ({' + '.join(train_splits)}) in {seconds:.1f} s")
    augmentation = Augmentation(**config["augmentation"])
    batches = Batches(images, labels, len(pack.labels), recipe.batch_size, augmentation, recipe.seed, workers)
    model = build_model(config, len(pack.labels))
    finetune.start_head(model, config, pack.class_ids)
    enable_jit(model)
    compile_model(model, config, len(batches))
    print(f"model {model.name}: {model.count_params():,} parameters; {len(batches)} steps per epoch")

    run = new_run(
        config,
        pack.labels,
        pack.class_ids,
        pack.meta["dataset"],
        {"train": len(images)},
        device,
        precision,
        command_line("fit-packed", [*recipe.to_argv(), *options_argv(own, DEFAULTS)]),
        trained_on=train_splits,
        backend=keras.backend.backend(),
        checkpoint="final epoch (fit-packed trains without a validation pass)",
    )
    write_json(run_dir / "run.json", run)

    session = Session(
        config,
        run_dir,
        resuming,
        patience=0,
        time_limit=recipe.time_limit,
        validated=False,
        tensorboard=False,
    )
    # Ctrl-C or SIGTERM: keep what was learnt (the backup can resume it).
    history = session.fit(
        model, batches, epochs=recipe.epochs, verbose=progress_verbosity(), interruptible=True
    )
    save_final(model, config, len(pack.labels), run_dir / "best.keras")
    final_top1 = float(history.history["top1"][-1]) if history.history.get("top1") else None
    run["training"] = {
        **session.record(len(images), final_train_top1=final_top1),
        "interrupted": session.interrupted,
    }
    write_json(run_dir / "run.json", run)
    if not session.interrupted:
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
    print(
        f"\n{session.epochs_run} epochs in {session.seconds:,.0f} s "
        f"({run['training']['images_per_second']} images/s); "
        f"saved {run_dir / 'best.keras'}; next, here or on the machine with the data:\n"
        f"  python -m training evaluate {run_dir} --data {config['data']}"
    )
    return run


def pack_config(recipe: Recipe, pack: Pack, train_splits: str) -> dict:
    """The run configuration: the recipe's, the pack's source and description, the splits trained on;
    ``ValueError`` when the pack was split or resized otherwise than the recipe says."""
    config = recipe.config()
    config["data"] = pack.meta["source"]  # the folder it was packed from (what `evaluate` reads)
    config["pack"] = {"file": Path(recipe.data).name, **pack.meta}
    mismatched = [
        f"--{key.replace('_', '-')} {config[key]} (pack: {pack.meta[key]})"
        for key in ("validation_fraction", "test_fraction", "seed")
        if config[key] != pack.meta[key]
    ]
    if list(config["image_size"]) != list(pack.meta["image_size"]):
        mismatched.append(f"--image-size {config['image_size'][0]} (pack: {pack.meta['image_size'][0]})")
    if mismatched:
        raise ValueError("the pack was split or resized differently: " + "; ".join(mismatched))
    splits = [name.strip() for name in train_splits.split(",") if name.strip()]
    if "test" in splits:
        raise ValueError("--train-splits must not include the held-out test split")
    config["train_splits"] = splits  # before the resume check: a resumed run must match it too
    return config


def save_final(model: keras.Model, config: dict, num_classes: int, path: Path) -> None:
    """Save the final weights as the run's checkpoint: float32, without optimizer state."""
    final = float32_model(model, config, num_classes)
    if final is model:  # drop the optimizer state: a rebuilt, uncompiled twin saves weights only
        final = build_model(config, num_classes)
        final.set_weights(model.get_weights())
    final.save(path)


def enable_jit(model: keras.Model) -> None:
    """Let JAX compile the whole training step, augmentation layers included.

    Keras marks RandomZoom / RandomTranslation / RandomRotation ``supports_jit = False`` (TensorFlow's
    image-transform op has no XLA kernel), which turns ``jit_compile="auto"`` off for the whole model:
    every op then runs eagerly, many times slower (benchmarks/README.md, "Training-side figures").
    JAX's versions of them compile fine.
    """
    if keras.backend.backend() == "jax":
        for layer in model._flatten_layers():
            layer.supports_jit = True


def describe_device() -> str:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return ", ".join(sorted({d.device_kind for d in jax.devices()}))
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    except Exception as error:  # a description only
        return f"unknown ({error})"
    return backend
