"""Export an end-to-end model to the model repository: ``models/<name>/<version>/``.

    python -m training export runs/resnet18_imagenette2-train_128px --name resnet18
    saved_model_cli show --dir models/resnet18/1 --all

A version folder holds a SavedModel (TensorFlow Serving's layout, versions 1, 2, 3...) with two
signatures, both calling the model with ``training=False`` so augmentation layers stay inactive:

- ``serving_default``: ``images`` uint8 ``[batch, height, width, 3]`` of any height and width
  -> ``{"probabilities": float32 [batch, classes]}`` (the model's own first layer resizes);
- ``serve_bytes``: ``image_bytes`` string ``[batch]`` of encoded JPEG / PNG / GIF (first frame) / BMP
  -> the same probabilities: each image is decoded to RGB and resized in-graph with
  ``training.end_to_end.resize_images`` (the model's resize op), so both paths agree numerically;

and ``metadata.json`` (``service.repository.REQUIRED_KEYS``: labels in output order, input size,
parameters, FLOPs, held-out metrics, the training command, the resize a server must mirror...,
and ``files``: the bytes and SHA-256 of every file of the SavedModel, which the service verifies).

Writing is atomic: everything goes to a hidden sibling ``.tmp-<version>-<pid>/`` — the SavedModel,
``metadata.json`` and, through ``finish``, the OpenVINO forms and their measurements
(``training.optimize``) — is fsynced, then renamed to ``<version>/``: a server watching the
repository sees a version once, complete (it never reloads a version it has loaded). A crash leaves
at most a hidden temporary folder, which no reader takes for a version
(``service.repository.latest_version`` only counts folders with both ``saved_model.pb`` and
``metadata.json``); an existing version folder is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from service.repository import (
    METADATA_FILE,
    NAME_PATTERN,
    export_records,
    fsync_dir,
    fsync_tree,
    next_version,
    read_metadata,
)
from training.end_to_end import RESIZE, image_hw, resize_images
from training.flops import count_flops, format_count
from training.portable import portable_command
from training.runs import float32_model, load_checkpoint, read_run, run_extras

Finish = Callable[[Path, Path], None]
"""``finish(folder, final)``: completes a version in its hidden folder before it is published."""

SIGNATURES = {
    "serving_default": {
        "inputs": {"images": "uint8 [batch, height, width, 3], RGB, any height and width"},
        "outputs": {"probabilities": "float32 [batch, classes], in the order of labels"},
    },
    "serve_bytes": {
        "inputs": {"image_bytes": "string [batch], encoded JPEG, PNG, GIF (first frame) or BMP"},
        "outputs": {"probabilities": "float32 [batch, classes], in the order of labels"},
    },
}


def export_model(
    model: keras.Model,
    *,
    name: str,
    labels: list[str],
    input_size: int | tuple[int, int] | list[int],
    architecture: str,
    dataset: str,
    metrics: dict,
    command: str,
    models_dir: str | Path = "models",
    version: int | None = None,
    extra: dict | None = None,
    finish: Finish | None = None,
) -> Path:
    """Write ``model`` as ``models_dir/name/version/`` (next free version by default); return it.

    ``finish(folder, final)`` completes the version in its hidden folder before it is published
    (``final``: the path it will have, for messages); if it raises, nothing is published.

    ``model`` follows ``training.end_to_end``: float32 ``images`` input of any size, first layer a
    ``Resizing`` named "resize" to ``input_size``, probabilities out. ``metrics`` holds the held-out
    ``top1`` and ``top5`` (fractions, or None when not measured). ``extra`` adds metadata keys.
    """
    height, width = image_hw(tuple(input_size) if isinstance(input_size, list) else input_size)
    labels = [str(label) for label in labels]
    check_export_inputs(model, name, labels, metrics)
    preprocessing = resize_preprocessing(model, (height, width))

    folder = Path(models_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    version = next_version(models_dir, name, version)
    final = folder / str(version)
    tmp = folder / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier crash of a process with our pid
    try:
        params = write_saved_model(model, tmp, (height, width))
        metadata = {
            "name": name,
            "version": version,
            "architecture": architecture,
            "labels": labels,
            "input_size": [height, width],
            "params": params,
            "flops": count_flops(model, (height, width, 3)),
            "dataset": dataset,
            "metrics": metrics,
            "command": portable_command(command),  # no folder of this machine (training.portable)
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "signatures": SIGNATURES,
            "preprocessing": preprocessing,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            **(extra or {}),
            "files": export_records(tmp),  # verified by the service before it serves
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        if finish is not None:
            finish(tmp, final)
        fsync_tree(tmp)
        if final.exists():  # another process took this version meanwhile
            raise FileExistsError(f"{final} appeared during the export; nothing was overwritten")
        os.rename(tmp, final)
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def check_export_inputs(model: keras.Model, name: str, labels: list[str], metrics: dict) -> None:
    """Clear errors for a bad name, labels that do not match the outputs, or malformed metrics."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '-' or '.' (not first)")
    classes = model.outputs[0].shape[-1]
    if len(labels) != classes:
        raise ValueError(f"{len(labels)} labels for a model with {classes} outputs")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct")
    for key in ("top1", "top5"):
        if key not in metrics:
            raise ValueError(f"metrics need {key!r} (held-out accuracy, or None when not measured)")
        value = metrics[key]
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"metrics[{key!r}] = {value!r} is not a fraction in [0, 1]")


def resize_preprocessing(model: keras.Model, size: tuple[int, int]) -> dict:
    """The resize a server must mirror, read from (and checked against) the model's "resize" layer.

    The bytes signature resizes with ``resize_images`` (``end_to_end.RESIZE``); exporting a model
    whose own resize differs would make the two signatures disagree, so that is an error.
    """
    try:
        layer = model.get_layer("resize")
    except ValueError:
        raise ValueError(
            f"model {model.name} has no layer named 'resize'; build it with "
            "training.end_to_end.build_end_to_end"
        ) from None
    config = layer.get_config()
    found = {
        "size": (config.get("height"), config.get("width")),
        "interpolation": config.get("interpolation"),
        "crop_to_aspect_ratio": config.get("crop_to_aspect_ratio"),
        "antialias": config.get("antialias"),
    }
    expected = {"size": size, **RESIZE}
    if found != expected:
        raise ValueError(f"the model's 'resize' layer does {found}, the export expects {expected}")
    return {
        "resize": RESIZE["interpolation"],
        "antialias": RESIZE["antialias"],
        "crop_to_aspect_ratio": RESIZE["crop_to_aspect_ratio"],
        "input": "RGB pixels 0..255; scaling and normalization are inside the model",
    }


def serving_functions(model: keras.Model, size: tuple[int, int]):
    """The two endpoint functions: uint8 image batches, and encoded image strings."""

    def classify_images(images):
        return {"probabilities": model(tf.cast(images, tf.float32), training=False)}

    def decode_one(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return resize_images(image, size)

    def classify_bytes(image_bytes):
        images = tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))
        return {"probabilities": model(images, training=False)}

    return classify_images, classify_bytes


def write_saved_model(model: keras.Model, path: Path, size: tuple[int, int]) -> int:
    """Write the SavedModel with both signatures; return the parameters it holds."""
    classify_images, classify_bytes = serving_functions(model, size)
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoints track the variables they read by themselves, and
    # track() would store every weight a second time (as Keras variables beside the TF ones).
    images_fn = archive.add_endpoint(
        "serving_default",
        classify_images,
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "serve_bytes",
        classify_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    archive.write_out(str(path), verbose=False)
    return count_parameters(images_fn)


def count_parameters(endpoint: tf.types.experimental.GenericFunction) -> int:
    """Scalars in every variable the endpoint reads: the whole exported model, wrapped TF Hub
    modules included (their variables are not Keras weights, so ``count_params`` misses them)."""
    variables = endpoint.get_concrete_function().variables
    return int(sum(np.prod(v.shape) for v in {id(v): v for v in variables}.values()))


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("run_dir", type=Path, help="a finished `python -m training fit` run (best.keras + run.json)")
    p("--name", help="model name in the repository (default: the run's export name)")
    p("--models-dir", type=Path, default=Path("models"))
    p("--version", type=int, help="version number (default: the next one); never overwrites")
    p(
        "--no-optimize",
        action="store_true",
        help="export the SavedModel only, without its OpenVINO forms (`python -m training optimize`)",
    )


def main(args: argparse.Namespace) -> int:
    finish = None
    if not args.no_optimize:
        from training.optimize import optimize_exported_run

        def finish(folder: Path, final: Path) -> None:
            optimize_exported_run(folder, run_dir=args.run_dir, shown=final)

    try:
        path = export_run(
            args.run_dir, name=args.name, models_dir=args.models_dir, version=args.version, finish=finish
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metadata = read_metadata(path)
    top1 = metadata["metrics"]["top1"]
    print(
        f"exported {metadata['architecture']} to {path}: {len(metadata['labels'])} classes, "
        f"{format_count(metadata['params'])} parameters, {format_count(metadata['flops'])} multiply-adds "
        f"at {metadata['input_size'][0]}x{metadata['input_size'][1]}, held-out top-1 "
        + (f"{top1:.4f}" if top1 is not None else "not measured")
    )
    print(f"inspect it: saved_model_cli show --dir {path} --all")
    return 0


def export_run(
    run_dir: str | Path,
    *,
    name: str | None = None,
    models_dir: str | Path = "models",
    version: int | None = None,
    finish: Finish | None = None,
) -> Path:
    """Export a finished fit run from ``run_dir/best.keras`` and ``run_dir/run.json``."""
    run_dir = Path(run_dir)
    run, checkpoint = read_run(run_dir)
    if not run.get("metrics"):
        raise ValueError(f"{run_dir} is not finished (run.json has no held-out metrics yet)")
    model = load_checkpoint(checkpoint)
    return export_trained(
        model, run, run_dir, name=name, models_dir=models_dir, version=version, finish=finish
    )


def export_trained(
    model: keras.Model,
    run: dict,
    run_dir: str | Path,
    *,
    name: str | None = None,
    models_dir: str | Path = "models",
    version: int | None = None,
    finish: Finish | None = None,
) -> Path:
    """Export the evaluated ``model`` of the run ``run`` (its ``run.json`` record) in ``run_dir``:
    the hand-over from a run folder to the repository (``fit`` ends with it; ``export_run`` too)."""
    # A mixed-precision checkpoint is rebuilt to compute in float32 (CPU servers run float16 slowly).
    model = float32_model(model, run["config"], len(run["labels"]))
    return export_model(
        model,
        name=name or run["name"],
        labels=run["labels"],
        input_size=run["image_size"],
        architecture=run["arch"],
        dataset=run["dataset"],
        metrics={"top1": run["metrics"]["top1"], "top5": run["metrics"]["top5"]},
        command=run["command"],
        models_dir=models_dir,
        version=version,
        extra=run_extras(run, run_dir),
        finish=finish,
    )
