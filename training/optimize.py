"""Faster forms of an export for CPU serving: OpenVINO fp32, bf16 and int8 beside the SavedModel.

    python -m training optimize models/imagenette/2                  # data: what the export names
    python -m training optimize models/imagenette/2 --data ../shared/data/imagenette2-train

Writes into the version folder (the SavedModel stays as it is, the canonical artifact):

    openvino/fp32/model.xml + .bin   the graph after the model's resize, fp32 (also served in bf16)
    openvino/int8/model.xml + .bin   the same, int8: NNCF post-training quantization calibrated on
                                     ``--calibration`` images of the run's own training split

and describes every form in ``metadata.json["runtimes"]`` (schema: ``service.runtimes``): precision,
files (bytes, SHA-256), held-out test top-1/top-5 and the share of test images whose top-1 agrees
with the SavedModel's on the same images, the accuracy gate's verdict, and the speed measured here.
``tensorflow`` (the SavedModel itself, the reference) and, on a CPU with native bf16,
``tensorflow-bf16`` (TensorFlow's oneDNN automatic mixed precision) are measured the same way.

Why "after the resize": OpenVINO has no conversion rule for the antialiased resize
(``ScaleAndTranslate``); the service resizes every upload to the input size before batching, so the
derived forms take uint8 images at that size: ``images`` uint8 ``[n, height, width, 3]`` ->
probabilities ``[n, classes]`` (the cast, the family's scaling, the backbone and the softmax inside).

The split is the one the model was trained with (fractions and seed from the export's metadata or
its run folder); the test split is never used for calibration. Running it again replaces the
derived forms (they are reproducible from the SavedModel). On the command line the version is
measured in a hidden copy beside it (``.tmp-<version>-optimize-<pid>``, its files hard links) that
then takes its place in one atomic exchange (``publish``): a server polling the repository sees the
old version or the new one, never new forms beside the old ``metadata.json``, and reloads it
(``service.serving.watcher``). During ``export`` and ``import`` the forms are written into the
version's own hidden folder before it is published.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.config import cpu_count
from service.repository import (
    InvalidExport,
    file_records,
    fsync_dir,
    fsync_tree,
    read_metadata,
    replace_folder,
    write_json,
)
from service.runtimes import (
    GATE,
    OPENVINO_PRECISION_HINT,
    cpu_has_bf16,
    cpu_name,
    load_openvino,
    load_tensorflow,
)
from training.portable import local_path, portable_path

OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
SPEED_BATCH = 32  # the batch of the throughput measurement (metadata's "batch32_images_per_s")
WARMUP_CALLS = 3  # untimed calls per batch size before a speed measurement
RESIZE_SCOPE = re.compile(r"(^|/)resize(_\d+)?/")
"""Ops of the end-to-end model's first layer (``training.end_to_end.resize_layer``, "resize")."""


@dataclass(frozen=True)
class HeldOut:
    """Images for one export: calibration from the training split, test images with labels."""

    calibration: np.ndarray  # uint8 [n, h, w, 3]
    test_images: np.ndarray  # uint8 [m, h, w, 3]
    test_labels: np.ndarray  # int [m]
    source: dict  # where they came from (data folder, split rule), recorded in metadata.json


# ------------------------------------------------------------------------ graph after the resize


def after_resize_function(saved_model_dir: str | Path, input_size: tuple[int, int]):
    """The SavedModel's ``serving_default`` cut after its resize layer, as a TensorFlow function:
    ``images`` uint8 ``[n, height, width, 3]`` -> probabilities ``[n, classes]``, weights frozen.

    The graph is frozen (variables to constants), the one tensor leaving the resize layer's scope
    becomes the new input (fed with the images cast to float32), and the rest is pruned away."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    saved_model = tf.saved_model.load(str(saved_model_dir))  # referenced: it owns the variables
    frozen = convert_variables_to_constants_v2(saved_model.signatures["serving_default"])
    graph_def = frozen.graph.as_graph_def()
    boundary = resize_output(graph_def)

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    after = wrapped.prune(
        feeds=wrapped.graph.get_tensor_by_name(boundary),
        fetches=wrapped.graph.get_tensor_by_name(frozen.outputs[0].name),
    )
    height, width = input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")])
    def classify(images):
        return after(tf.cast(images, tf.float32))

    return classify.get_concrete_function()


def resize_output(graph_def) -> str:
    """The name of the one tensor that leaves the resize layer's ops (``RESIZE_SCOPE``)."""
    inside = {node.name for node in graph_def.node if RESIZE_SCOPE.search(node.name)}
    leaving = {
        source if ":" in source else f"{source}:0"
        for node in graph_def.node
        if node.name not in inside
        for source in node.input
        if not source.startswith("^") and source.split(":")[0] in inside
    }
    if len(leaving) != 1:
        raise ValueError(
            f"cannot find where the model's resize layer ends ({len(leaving)} tensors leave a scope "
            "named 'resize'); was it exported by training.export from training.end_to_end?"
        )
    return leaving.pop()


# ------------------------------------------------------------------------------ OpenVINO forms


def to_openvino(function):
    """An OpenVINO model of the after-resize function (``ov.convert_model``)."""
    import openvino as ov

    return ov.convert_model(function)


def quantize_int8(model, calibration: np.ndarray):
    """NNCF post-training quantization (int8 weights and activations) on calibration images.

    Full bias correction instead of NNCF's fast one: the better top-1 agreement with the SavedModel
    on the default model's *validation* split, for a few seconds more (the settings tried and their
    figures: benchmarks/README.md, "Choosing the CPU runtime")."""
    import nncf

    samples = [calibration[i : i + 1] for i in range(len(calibration))]
    return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), fast_bias_correction=False)


def write_ir(model, folder: Path) -> dict:
    """Save an OpenVINO IR as ``folder/model.xml`` + ``.bin`` (replacing it atomically:
    ``service.repository.replace_folder``); its file records."""
    import openvino as ov

    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
    replace_folder(tmp, folder)
    return file_records(folder)


# ------------------------------------------------------------------------------ measuring


def predict_all(predict, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def score(probabilities: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict:
    """Top-1, top-5 and (given the reference's top-1 answers) the share of equal top-1 answers."""
    top5 = np.argsort(probabilities, axis=1)[:, ::-1][:, :5]
    result = {
        "images": int(len(labels)),
        "top1": float(np.mean(top5[:, 0] == labels)),
        "top5": float(np.mean(np.any(top5 == labels[:, None], axis=1))),
    }
    if reference is not None:
        result["agreement"] = float(np.mean(top5[:, 0] == reference))
    return result


def measure_speed(
    predict, input_size: tuple[int, int], *, seconds: float = 1.0, repeats: int | None = None
) -> dict:
    """Median batch-1 latency and batch-``SPEED_BATCH`` images/s of ``predict`` (uint8 images ->
    probabilities) on random images at ``input_size``, on this process' CPUs: the one timing of a
    model (``optimize`` for every runtime, ``compare`` for every export).

    Each batch size gets ``WARMUP_CALLS`` untimed calls (kernels are built per shape), then
    ``repeats`` timed calls or, without ``repeats``, as many as fit in ``seconds`` (at least 5 at
    batch 1 and 3 at batch ``SPEED_BATCH``)."""
    rng = np.random.default_rng(0)

    def median_seconds(batch: int, least: int) -> float:
        images = rng.integers(0, 256, (batch, *input_size, 3), dtype=np.uint8)
        for _ in range(WARMUP_CALLS):
            predict(images)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while (len(times) < repeats) if repeats else (time.perf_counter() < deadline or len(times) < least):
            start = time.perf_counter()
            predict(images)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    single = median_seconds(1, least=5)
    batched = median_seconds(SPEED_BATCH, least=3)
    return {
        "batch1_ms": round(1000 * single, 3),
        "batch32_images_per_s": round(SPEED_BATCH / batched, 1),
        "cpus": cpu_count(),
    }


# ------------------------------------------------------------------------------ the whole job


def optimize_export(
    version_dir: str | Path,
    held_out: HeldOut,
    *,
    precisions: tuple[str, ...] = OPENVINO_PRECISIONS,
    tensorflow_bf16: bool | None = None,
    speed_seconds: float = 1.0,
    log=print,
) -> dict:
    """Write the OpenVINO forms of an export, measure every runtime, record them in metadata.json.

    Returns ``metadata["runtimes"]``. ``tensorflow_bf16`` (default: when the CPU has native bf16)
    also measures TensorFlow's oneDNN bf16, last (a process-wide TensorFlow setting, switched
    off again afterwards)."""
    folder = Path(version_dir)
    metadata = read_metadata(folder)
    size = tuple(metadata["input_size"])
    if held_out.test_images.shape[1:3] != size or held_out.calibration.shape[1:3] != size:
        raise ValueError(f"held-out images must be {size[0]}x{size[1]}, the model's input size")
    unknown = set(precisions) - set(OPENVINO_PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precisions {sorted(unknown)}; choose from {OPENVINO_PRECISIONS}")
    labels = held_out.test_labels

    log(f"tensorflow: the SavedModel on {len(labels):,} test images (the reference)")
    saved_model = load_tensorflow(folder)
    probabilities = predict_all(saved_model, held_out.test_images)
    reference = Reference.of(probabilities, labels)
    runtimes = {
        "tensorflow": measure(
            saved_model, "tensorflow", "fp32", held_out, reference, speed_seconds, probabilities=probabilities
        )
    }

    if precisions:
        runtimes.update(openvino_forms(folder, size, precisions, held_out, reference, speed_seconds, log))

    if tensorflow_bf16 if tensorflow_bf16 is not None else cpu_has_bf16():
        import tensorflow as tf

        try:
            predict = load_tensorflow(folder, bf16=True)
            runtimes["tensorflow-bf16"] = measure(
                predict, "tensorflow", "bf16", held_out, reference, speed_seconds
            )
        finally:  # a process-wide setting: models loaded after this compute in fp32 again
            tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": False})
        log(summary_line("tensorflow-bf16", runtimes["tensorflow-bf16"]))

    metadata["runtimes"] = runtimes
    metadata["runtimes_data"] = held_out.source
    write_json(folder / "metadata.json", metadata)
    return runtimes


def openvino_forms(
    folder: Path,
    size: tuple[int, int],
    precisions: tuple[str, ...],
    held_out: HeldOut,
    reference: Reference,
    speed_seconds: float,
    log,
) -> dict:
    """Write the OpenVINO IRs ``precisions`` need into ``folder/openvino/`` and measure each
    precision: its ``metadata["runtimes"]`` entries. bf16 serves the fp32 IR (skipped on a CPU
    without native bf16); an IR no precision needs any more is removed."""
    forms = {}
    ov_root = folder / "openvino"
    ov_root.mkdir(exist_ok=True)
    log("openvino: converting the graph after the resize")
    models = {"fp32": to_openvino(after_resize_function(folder, size))}
    if "int8" in precisions:
        log(f"openvino int8: calibrating on {len(held_out.calibration)} training images")
        models["int8"] = quantize_int8(models["fp32"], held_out.calibration)
    needed = {"int8" if p == "int8" else "fp32" for p in precisions}  # bf16 serves the fp32 IR
    files = {artifact: write_ir(models[artifact], ov_root / artifact) for artifact in needed}
    for precision in precisions:
        if precision == "bf16" and not cpu_has_bf16():
            log("openvino bf16: skipped (this CPU has no native bf16)")
            continue
        artifact = "int8" if precision == "int8" else "fp32"
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINT[precision]}
        predict = load_openvino(ov_root / artifact / "model.xml", config)
        key = f"openvino-{precision}"
        forms[key] = measure(
            predict,
            "openvino",
            precision,
            held_out,
            reference,
            speed_seconds,
            path=f"openvino/{artifact}",
            files=files[artifact],
            config=config,
        )
        log(summary_line(key, forms[key]))
    for stale in {"fp32", "int8"} - needed:  # left by an earlier run with other precisions
        shutil.rmtree(ov_root / stale, ignore_errors=True)
    return forms


@dataclass(frozen=True)
class Reference:
    """The SavedModel's answers on the test images, which every other form is judged against."""

    top1_answers: np.ndarray
    top1: float

    @classmethod
    def of(cls, probabilities: np.ndarray, labels: np.ndarray) -> Reference:
        answers = probabilities.argmax(axis=1)
        return cls(answers, float(np.mean(answers == labels)))


def measure(
    predict,
    runtime: str,
    precision: str,
    held_out: HeldOut,
    reference: Reference,
    speed_seconds: float = 1.0,
    probabilities: np.ndarray | None = None,
    **extra,
) -> dict:
    """One ``metadata.json["runtimes"]`` entry: test scores, the gate's verdict against the
    SavedModel's ``reference`` answers, and the speed on this machine. ``probabilities``: the
    test images' already, when they were computed for the reference."""
    if probabilities is None:
        probabilities = predict_all(predict, held_out.test_images)
    test = score(probabilities, held_out.test_labels, reference.top1_answers)
    gate = GATE.judge(test["top1"], reference.top1, test["agreement"])
    speed = measure_speed(predict, held_out.test_images.shape[1:3], seconds=speed_seconds)
    return {
        "runtime": runtime,
        "precision": precision,
        **extra,
        "test": test,
        "gate": gate,
        "speed": {**speed, "cpu": cpu_name()},
    }


def summary_line(key: str, found: dict) -> str:
    test, gate, speed = found["test"], found["gate"], found["speed"]
    return (
        f"{key:16s} top-1 {100 * test['top1']:.2f} %  agreement {100 * test.get('agreement', 1):.1f} %"
        f"  gate {'passed' if gate['passed'] else 'FAILED'}  batch 1 {speed['batch1_ms']:.2f} ms"
        f"  batch 32 {speed['batch32_images_per_s']:.0f} images/s ({speed['cpus']} CPUs)"
    )


# ------------------------------------------------------------------------------ data


def held_out_from_data(data, *, calibration: int = 300, seed: int = 0, limit: int | None = None) -> HeldOut:
    """Calibration images (a seeded sample of the training split) and the test split of a
    ``training.data.Data``, resized exactly as training resized them."""
    import tensorflow as tf

    def arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
        images, labels = zip(*ds.as_numpy_iterator(), strict=True)
        return np.stack(images), np.array(labels)

    train = data.splits["train"].shuffle(4096, seed=seed).take(calibration)
    test = data.splits["test"].take(limit) if limit else data.splits["test"]
    calibration_images, _ = arrays(train)
    test_images, test_labels = arrays(test)
    return HeldOut(
        calibration=calibration_images,
        test_images=test_images,
        test_labels=test_labels,
        source={
            "data": data.name,
            "calibration": f"{len(calibration_images)} images of the training split",
            "test": f"{len(test_images)} images of the test split",
        },
    )


def held_out_for_export(
    version_dir: Path,
    metadata: dict,
    *,
    data: str | None = None,
    calibration: int = 300,
    limit: int | None = None,
    run_dir: Path | None = None,
) -> HeldOut:
    """The held-out images of an export, split as it was trained: the data folder and split
    fractions from its run folder's ``run.json`` (``run_dir``, else the one the metadata names),
    else from the pack it was trained from (paths the metadata records: ``training.portable``)."""
    from training.data import SplitFractions, load_data

    if run_dir is None and metadata.get("run"):
        run_dir = local_path(metadata["run"])
    if run_dir is not None and (Path(run_dir) / "run.json").is_file():
        config = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))["config"]
    else:
        config = (metadata.get("training") or {}).get("pack") or {}
        config = {**config, "data": config.get("source")}
    if not data and config.get("data") and config["data"] != "imagenette":  # "imagenette": TFDS
        data = str(local_path(config["data"]))
    data = data or config.get("data")
    if not data:
        raise FileNotFoundError(
            f"{version_dir} records no dataset: give --data FOLDER, class sub-folders named like its labels"
        )
    if data != "imagenette" and not Path(data).is_dir():
        raise FileNotFoundError(
            f"the dataset {version_dir} was trained on, {data}, is not a folder here: give --data FOLDER"
        )
    fractions = SplitFractions(
        config.get("validation_fraction", 0.15), config.get("test_fraction", 0.15), config.get("seed", 0)
    )
    dataset = load_data(
        data,
        tuple(metadata["input_size"]),
        fractions=fractions,
        labels_map=config.get("labels_map"),
        labels=metadata["labels"],  # class folders matched to the labels by name, in any order
    )
    if dataset.num_classes != len(metadata["labels"]):
        raise ValueError(f"{data} has {dataset.num_classes} classes, the model {len(metadata['labels'])}")
    recorded = ((metadata.get("training") or {}).get("splits") or {}).get("test")
    if recorded is not None and limit is None and recorded != dataset.sizes["test"]:
        raise ValueError(
            f"{data} split with {fractions} gives {dataset.sizes['test']} test images, the model was "
            f"evaluated on {recorded}: not the data or split it was trained with"
        )
    held_out = held_out_from_data(dataset, calibration=calibration, seed=fractions.seed, limit=limit)
    held_out.source.update(
        data=data if data == "imagenette" else portable_path(data),
        validation_fraction=fractions.validation,
        test_fraction=fractions.test,
        seed=fractions.seed,
    )
    return held_out


def optimize_after_export(version_dir: Path, held_out, log=print, shown: Path | None = None) -> dict | None:
    """``optimize_export`` during an export, before it is published (``version_dir``: its hidden
    folder, ``shown``: the version folder it becomes; ``held_out``: a function returning the
    ``HeldOut``); when OpenVINO or NNCF is missing, says so and how to do it later."""
    shown = shown or version_dir
    missing = available()
    if missing:
        log(f"not optimized ({missing}): later, `python -m training optimize {shown}`")
        return None
    runtimes = optimize_export(version_dir, held_out(), log=log)
    log(f"faster forms of {shown} (gate: {GATE.rule}):")
    for key, found in runtimes.items():
        log("  " + summary_line(key, found))
    return runtimes


def available() -> str | None:
    """None when OpenVINO and NNCF are installed, else what is missing (``optimize`` needs both)."""
    import importlib.util

    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("version_dir", type=Path, help="an exported version folder, e.g. models/imagenette/2")
    p("--data", help="the class-folder dataset it was trained on (default: what the export records)")
    p("--calibration", type=int, default=300, help="training-split images to calibrate int8 on")
    p(
        "--precisions",
        default=",".join(OPENVINO_PRECISIONS),
        help="OpenVINO forms to write and measure (comma-separated; empty: none)",
    )
    p("--limit", type=int, help="test images to evaluate on (default: the whole test split)")
    p(
        "--rewrite",
        action="store_true",
        help="measure a version that already has its forms again, rewriting its openvino/ and "
        "metadata.json in place (without it, such a version is left as it is)",
    )


def already_optimized(folder: Path, metadata: dict) -> str | None:
    """Why ``optimize`` leaves ``folder`` alone without ``--rewrite``: its forms are measured."""
    measured = sorted(metadata.get("runtimes") or {})
    if not measured:
        return None
    return (
        f"{folder} already has its runtimes measured ({', '.join(measured)}); `--rewrite` measures "
        "them again and rewrites its openvino/ and metadata.json (a committed model shows as "
        "modified; a server that serves it loads it again once it is rewritten)"
    )


def main(args: argparse.Namespace) -> int:
    from training import quiet

    quiet.quiet_import("tensorflow")  # imported lazily below: its start-up lines held back here
    folder = args.version_dir
    try:
        metadata = read_metadata(folder)
    except InvalidExport as error:
        print(f"error: {folder} is not an export ({error})", file=sys.stderr)
        return 2
    precisions = tuple(p for p in args.precisions.split(",") if p)
    refusal = None if args.rewrite else already_optimized(folder, metadata)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        held_out = held_out_for_export(
            folder, metadata, data=args.data, calibration=args.calibration, limit=args.limit
        )
        runtimes = measured_aside(folder, lambda copy: optimize_export(copy, held_out, precisions=precisions))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{folder}: runtimes recorded in metadata.json (gate: {GATE.rule})")
    for key, found in runtimes.items():
        print("  " + summary_line(key, found))
    return 0


def measured_aside(folder: Path, measure) -> dict:
    """``measure(copy)`` on a hidden copy of the version ``folder`` (hard links: no bytes copied;
    what ``optimize_export`` writes replaces files, never writes into them), then the copy
    published in its place (``publish``); the copy is removed whatever happens."""
    folder = Path(folder)
    copy = folder.parent / f".tmp-{folder.name}-optimize-{os.getpid()}"
    shutil.rmtree(copy, ignore_errors=True)
    try:
        shutil.copytree(folder, copy, symlinks=True, ignore=_hidden, copy_function=_link_or_copy)
        result = measure(copy)
        publish(copy, folder)
    finally:
        shutil.rmtree(copy, ignore_errors=True)  # after publish: the old version
    return result


def publish(new: Path, folder: Path) -> None:
    """Put the finished folder ``new`` (a sibling) in the place of ``folder`` in one step: Linux's
    ``renameat2(RENAME_EXCHANGE)`` swaps the two names atomically, so ``folder`` is never absent
    nor half-written, and ``new`` then holds the old version (the caller removes it). Where the
    exchange is not available (another OS, a file system without it), two renames
    (``service.repository.replace_folder``: ``folder`` absent for an instant)."""
    fsync_tree(new)
    try:
        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # no C library to ask (Windows)
        renameat2 = None
    if renameat2 is not None:
        at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fcntl.h, linux/fs.h)
        if renameat2(at_cwd, os.fsencode(new), at_cwd, os.fsencode(folder), exchange) == 0:
            fsync_dir(Path(folder).parent)
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, f"cannot exchange {new} and {folder}: {os.strerror(code)}")
    replace_folder(new, folder)


def _hidden(_folder: str, names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(".")]


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def optimize_exported_run(version_dir: Path, run_dir: Path | None = None, shown: Path | None = None) -> None:
    """During ``python -m training export RUN``: the faster forms, from the data the run names; a
    note instead when that data is not here (``shown``: as ``optimize_after_export``)."""
    shown = shown or version_dir
    metadata = read_metadata(version_dir)
    try:
        optimize_after_export(
            version_dir, lambda: held_out_for_export(shown, metadata, run_dir=run_dir), shown=shown
        )
    except FileNotFoundError as error:
        print(f"not optimized: {error}; later: `python -m training optimize {shown} --data DIR`")
