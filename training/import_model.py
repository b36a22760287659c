"""Bring your own model: a Keras or SavedModel image classifier becomes a repository version.

    python -m training import classifier.keras --labels labels.txt --name mine
    python -m training import exported_savedmodel/ --labels labels.txt --name mine \\
        --image-size 224 --preprocessing tf --outputs logits --data ../shared/data/imagenette2-train

``PATH`` is a ``.keras`` file (``keras.saving.load_model``) or a SavedModel folder (its
``serving_default`` signature, as ``model.export`` writes it, loaded with ``keras.layers.TFSMLayer``).
The model must take one image tensor ``[batch, height, width, 3]`` (uint8 pixels, or floats) and
return one ``[batch, classes]`` tensor. It is wrapped the way convzoo's own models are
(``training.end_to_end``): the shared resize ("resize": any image size in), the pixel scaling it
expects, the model, a softmax when it returns logits. Then ``training.export.export_model`` writes the
version (both signatures, metadata, checksums) and, with ``--data``, ``training.optimize`` adds the
gated CPU forms. (``python -m service.import_model`` is another thing: it copies a repository
version into BentoML's model store.)

- ``--image-size``: the size the model takes (``H`` or ``H W``); needed only when its input shape
  leaves it open, and checked against it otherwise.
- ``--preprocessing`` (float input only; a uint8 model takes the pixels as they are): ``imagenet``,
  ``tf``, ``unit`` (``training.architectures.scaling``), keras' ``caffe`` / ``torch`` modes, or
  ``none``. Default ``auto``: detected from the name of a keras.applications model (ResNet50 ->
  caffe, MobileNetV2 -> tf, EfficientNet -> none: it scales inside...); anything else must say it.
- ``--outputs logits|probabilities``: default ``auto``, detected from the model's answers on a few
  random images (rows that are distributions: probabilities; else logits, and a softmax is added).

What is not known is recorded as such, never invented: ``metadata.json["unknown"]`` names each
unknown field and why (``validate_metadata`` checks its form). Without ``--data`` the held-out
``metrics`` are ``null`` and no CPU form is written (the accuracy gate needs labelled images the
model did not train on; the service then serves the SavedModel). With ``--data`` (a folder of class
sub-folders named like the labels) its test split gives the metrics and the gate, its training
split the int8 calibration (``training.optimize``'s default split: 15 % validation, 15 % test, seed
0); the model's own training data stays unknown, so whether those images are truly held out is the
user's claim.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import keras
import numpy as np
from keras import layers

from service.repository import is_valid_name, read_metadata, write_json
from training.architectures.scaling import scaling_layers
from training.architectures.weights import TWIN_PREPROCESSING, mode_layers
from training.cli import command_line
from training.end_to_end import image_hw, resize_layer
from training.export import export_model
from training.flops import format_count
from training.hub import read_labels
from training.portable import portable_path
from training.quiet import error_line

PREPROCESSINGS = ("auto", "imagenet", "tf", "unit", "caffe", "torch", "none")
OUTPUTS = ("auto", "logits", "probabilities")

# keras.applications model names (their ``name=`` defaults) -> the module whose preprocess_input
# they expect (``TWIN_PREPROCESSING``: caffe, tf, torch or in_model).
KERAS_APPLICATION_NAMES = (
    (r"vgg1[69]", "vgg16"),
    (r"resnet\d+", "resnet"),
    (r"resnet\d+v2", "resnet_v2"),
    (r"inception_v3", "inception_v3"),
    (r"xception", "xception"),
    (r"mobilenet_\d\.\d\d_\d+", "mobilenet"),
    (r"mobilenetv2_\d\.\d\d_\d+", "mobilenet_v2"),
    (r"mobilenetv3(small|large)", "mobilenet_v3"),
    (r"densenet\d+", "densenet"),
    (r"efficientnet(b\d|v2-(b\d|s|m|l))", "efficientnet"),
    (r"convnext_(tiny|small|base|large|xlarge)", "convnext"),
)


class ImportRefused(ValueError):
    """The model cannot be imported as asked; the message says why (one line, exit status 2)."""


# ------------------------------------------------------------------------------ reading the model


def load_classifier(path: str | Path):
    """``(model, format)``: the ``.keras`` model, or a SavedModel's ``serving_default`` as a
    Keras layer (``TFSMLayer``), with ``format`` "keras" or "saved_model"."""
    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        try:
            return keras.saving.load_model(path, compile=False), "keras"
        except Exception as error:
            raise ImportRefused(f"{path} is not a loadable .keras model ({error_line(error)})") from None
    if path.is_dir() and (path / "saved_model.pb").is_file():
        try:
            layer = SavedModelLayer(str(path), call_endpoint="serving_default", name="saved_model")
        except Exception as error:
            raise ImportRefused(
                f"{path}: no usable serving_default signature ({error_line(error)})"
            ) from None
        return layer, "saved_model"
    raise ImportRefused(f"{path} is neither a .keras file nor a SavedModel folder (with saved_model.pb)")


class SavedModelLayer(layers.TFSMLayer):
    """A SavedModel's signature as a Keras layer (``TFSMLayer``), called with its input's name
    (signature functions take keyword arguments only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _, self.input_specs = self.call_endpoint_fn.structured_input_signature

    def call(self, inputs, training=False):
        if len(self.input_specs) != 1:
            raise ImportRefused(
                f"the signature takes {len(self.input_specs)} inputs; expected one image batch"
            )
        return self.call_endpoint_fn(**{next(iter(self.input_specs)): inputs})


def input_spec(model, path) -> tuple[tuple, str]:
    """The model's one input: ``(shape without batch, dtype)``; refused unless an image tensor."""
    if isinstance(model, SavedModelLayer):
        specs = list(model.input_specs.values())
        shapes = [tuple(spec.shape) for spec in specs]
        dtypes = [spec.dtype.name for spec in specs]
    else:
        shapes = [tuple(tensor.shape) for tensor in model.inputs]
        dtypes = [str(tensor.dtype) for tensor in model.inputs]
    if len(shapes) != 1:
        raise ImportRefused(f"{path} takes {len(shapes)} inputs; an image classifier takes one image batch")
    shape, dtype = shapes[0], dtypes[0].removeprefix("<dtype: '").removesuffix("'>")
    if len(shape) != 4 or shape[-1] != 3 or not (dtype == "uint8" or dtype.startswith("float")):
        raise ImportRefused(
            f"{path} takes {dtype} {list(shape)}, not an image tensor "
            "(uint8 or float [batch, height, width, 3])"
        )
    return tuple(shape[1:3]), dtype


def choose_size(model_hw: tuple, given: list[int] | None, path) -> tuple[int, int]:
    """The input size: the model's own, or ``--image-size`` (which must agree with a fixed one)."""
    given_hw = image_hw(given[0] if len(given) == 1 else tuple(given)) if given else None
    if None not in model_hw:
        model_hw = (int(model_hw[0]), int(model_hw[1]))
        if given_hw and given_hw != model_hw:
            raise ImportRefused(f"{path} takes {model_hw[0]}x{model_hw[1]} images, not --image-size {given}")
        return model_hw
    if not given_hw:
        raise ImportRefused(f"{path} takes images of any size: give the size it expects with --image-size")
    return given_hw


def keras_application(model) -> str | None:
    """The keras.applications module ``model`` comes from, judged by its name, or None."""
    name = getattr(model, "name", "").lower()
    for pattern, module in KERAS_APPLICATION_NAMES:
        if re.fullmatch(pattern, name):
            return module
    return None


def choose_preprocessing(model, dtype: str, given: str) -> tuple[str, str]:
    """``(preprocessing, how it was chosen)``: what the model expects of 0..255 RGB pixels."""
    if dtype == "uint8":
        if given not in ("auto", "none"):
            raise ImportRefused(
                f"the model takes uint8 pixels as they are: --preprocessing {given} cannot apply"
            )
        return "none", "uint8 input: the pixels as they are"
    if given != "auto":
        return given, "given (--preprocessing)"
    module = keras_application(model)
    if module is None:
        raise ImportRefused(
            "cannot tell what pixel scaling this float-input model expects (not a keras.applications "
            f"model): give --preprocessing {'|'.join(PREPROCESSINGS[1:])}"
        )
    mode = TWIN_PREPROCESSING[module]
    mode = "none" if mode == "in_model" else mode
    return mode, f"detected: keras.applications {module} model {model.name!r} (preprocess_input {mode})"


def preprocessing_layers(preprocessing: str) -> list[layers.Layer]:
    if preprocessing in ("caffe", "torch"):
        return mode_layers(preprocessing)
    return scaling_layers(None if preprocessing == "none" else preprocessing)


def sample_outputs(model, dtype: str, size: tuple[int, int], images: int = 4) -> np.ndarray:
    """The model's outputs on a few random images of its input size and dtype."""
    pixels = np.random.default_rng(0).integers(0, 256, (images, *size, 3)).astype(dtype)
    return keras.ops.convert_to_numpy(single_output(model(pixels)))


def single_output(outputs):
    """The one output tensor (a SavedModel signature answers with a dict)."""
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ImportRefused(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); expected one")
        return next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ImportRefused(f"the model has {len(outputs)} outputs; expected one")
        return outputs[0]
    return outputs


def choose_outputs(sample: np.ndarray, given: str) -> tuple[str, str]:
    """``(logits|probabilities, how it was chosen)``."""
    if sample.ndim != 2:
        raise ImportRefused(f"the model returns shape {list(sample.shape)}; expected [batch, classes]")
    if given != "auto":
        return given, "given (--outputs)"
    distributions = bool(np.all(sample >= 0) and np.allclose(sample.sum(axis=1), 1.0, atol=1e-3))
    found = "probabilities" if distributions else "logits"
    return found, (
        f"detected: the outputs on {len(sample)} random images "
        + ("are distributions (non-negative, rows sum to 1)" if distributions else "are not distributions")
    )


@keras.saving.register_keras_serializable(package="convzoo")
class ToUint8(layers.Layer):
    """Resized float pixels 0..255 -> uint8, rounded (for a model that takes uint8 images)."""

    def call(self, x):
        return keras.ops.cast(keras.ops.clip(keras.ops.round(x), 0, 255), "uint8")


@keras.saving.register_keras_serializable(package="convzoo")
class Probabilities(layers.Layer):
    """The one output as float32 probabilities: a softmax over logits, or the probabilities as they are."""

    def __init__(self, softmax: bool, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.softmax = softmax

    def call(self, outputs):
        outputs = keras.ops.cast(single_output(outputs), "float32")
        return keras.ops.softmax(outputs, axis=-1) if self.softmax else outputs

    def get_config(self):
        return {**super().get_config(), "softmax": self.softmax}


def wrap(model, *, size, dtype: str, preprocessing: str, outputs: str, name: str) -> keras.Model:
    """The end-to-end model (``training.end_to_end``'s shape): float32 images of any size -> the
    shared "resize" -> uint8 or the scaling -> ``model`` -> float32 "probabilities"."""
    images = keras.Input((None, None, 3), dtype="float32", name="images")
    x = resize_layer(size)(images)
    if dtype == "uint8":
        x = ToUint8(name="to_uint8")(x)
    else:
        for layer in preprocessing_layers(preprocessing):
            x = layer(x)
        if dtype != "float32":
            x = keras.ops.cast(x, dtype)
    probabilities = Probabilities(outputs == "logits", name="probabilities")(model(x))
    return keras.Model(images, probabilities, name=name)


# ------------------------------------------------------------------------------ the whole job


def import_model(
    path: str | Path,
    *,
    labels: list[str],
    name: str,
    image_size: list[int] | None = None,
    preprocessing: str = "auto",
    outputs: str = "auto",
    models_dir: str | Path = "models",
    version: int | None = None,
    command: str = "",
    log=print,
    finish=None,
) -> Path:
    """Write the model at ``path`` as ``models_dir/name/<version>/``; return that folder
    (``finish``: ``training.export.export_model``'s)."""
    path = Path(path)
    if not is_valid_name(name):
        raise ImportRefused(f"model name {name!r} must be letters, digits, '_', '-' or '.' (not first)")
    if preprocessing not in PREPROCESSINGS or outputs not in OUTPUTS:
        raise ImportRefused(f"--preprocessing is one of {PREPROCESSINGS}, --outputs one of {OUTPUTS}")
    log(f"loading {path}")
    model, form = load_classifier(path)
    model_hw, dtype = input_spec(model, path)
    size = choose_size(model_hw, image_size, path)
    preprocessing, preprocessing_how = choose_preprocessing(model, dtype, preprocessing)
    sample = sample_outputs(model, dtype, size)
    outputs, outputs_how = choose_outputs(sample, outputs)
    if len(labels) != sample.shape[-1]:
        raise ImportRefused(f"{len(labels)} labels for a model with {sample.shape[-1]} outputs")
    log(
        f"{form} model: {dtype} {size[0]}x{size[1]} input, {sample.shape[-1]} classes; "
        f"preprocessing {preprocessing} ({preprocessing_how}); {outputs} ({outputs_how})"
    )
    wrapped = wrap(model, size=size, dtype=dtype, preprocessing=preprocessing, outputs=outputs, name=name)
    unknown = {
        "dataset": "not recorded in the model file: what it was trained on is unknown",
        "metrics": "no held-out evaluation (import without --data)",
    }
    log("exporting the SavedModel (both signatures) and its checksums")
    return export_model(
        wrapped,
        name=name,
        labels=labels,
        input_size=size,
        architecture=f"{getattr(model, 'name', 'model')} (imported {form})"
        if form == "keras"
        else "imported SavedModel",
        dataset=None,
        metrics={"top1": None, "top5": None},
        command=command,
        models_dir=models_dir,
        version=version,
        finish=finish,
        extra={
            "imported": {
                "source": portable_path(path),
                "format": form,
                "input": f"{dtype} [batch, {size[0]}, {size[1]}, 3]",
                "scaling": preprocessing,
                "scaling_how": preprocessing_how,
                "outputs": outputs + (" (a softmax is added)" if outputs == "logits" else ""),
                "outputs_how": outputs_how,
            },
            "unknown": unknown,
        },
    )


def check_data(data: str, labels: list[str]) -> None:
    """``--data`` must be class folders named like the labels (in any order: they are matched by
    name, ``training.data.class_order_for``)."""
    from training.data import class_order_for

    if not Path(data).is_dir():
        raise ImportRefused(f"--data {data} is not a folder of class sub-folders")
    try:
        class_order_for(data, labels)
    except ValueError as error:
        raise ImportRefused(f"--data: {error}, so its scores would mean nothing") from None


def evaluate_and_optimize(
    version_dir: Path, data: str, *, calibration: int, limit: int | None, precisions, log, shown=None
):
    """With ``--data``: the held-out metrics from its test split, then the gated CPU forms, in the
    version's hidden folder before it is published (``shown``: the folder it becomes)."""
    from service.runtimes import GATE
    from training.optimize import available, held_out_for_export, optimize_export, summary_line

    metadata = read_metadata(version_dir)
    check_data(data, metadata["labels"])
    log(f"loading held-out images from {data}")
    held_out = held_out_for_export(version_dir, metadata, data=data, calibration=calibration, limit=limit)
    missing = available()
    if missing:
        log(f"{missing}: only the SavedModel is evaluated; the CPU forms are skipped")
        precisions = ()
    runtimes = optimize_export(version_dir, held_out, precisions=tuple(precisions), log=log)
    metadata = read_metadata(version_dir)
    test = runtimes["tensorflow"]["test"]
    metadata["metrics"] = {
        "top1": test["top1"],
        "top5": test["top5"],
        "images": test["images"],
        "split": metadata["runtimes_data"],
    }
    metadata["unknown"]["metrics"] = (
        f"the test split of {portable_path(data)}: whether the model saw these images in training is unknown"
    )
    write_json(version_dir / "metadata.json", metadata)
    log(
        f"runtimes of {shown or version_dir} (gate: {GATE.rule}; the service's auto uses only those "
        "that passed):"
    )
    for key, found in runtimes.items():
        log("  " + summary_line(key, found))
    return runtimes


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("path", type=Path, help="a .keras file or a SavedModel folder of an image classifier")
    p("--labels", type=Path, required=True, help="class names, one per line, in output order")
    p("--name", required=True, help="model name in the repository")
    p("--image-size", type=int, nargs="+", metavar="PX", help="H or H W (when the model leaves it open)")
    p("--preprocessing", choices=PREPROCESSINGS, default="auto", help="pixel scaling a float model expects")
    p("--outputs", choices=OUTPUTS, default="auto", help="what the model returns (logits get a softmax)")
    p("--models-dir", type=Path, default=Path("models"))
    p("--version", type=int, help="version number (default: the next one); never overwrites")
    p("--data", help="class-folder dataset: held-out metrics and the gated CPU forms (else skipped)")
    p("--calibration", type=int, default=300, help="training-split images to calibrate int8 on")
    p("--limit", type=int, help="test images to evaluate on (default: the whole test split)")
    p("--precisions", default="fp32,bf16,int8", help="OpenVINO forms with --data (comma-separated)")


def main(args: argparse.Namespace) -> int:
    if args.image_size is not None and len(args.image_size) > 2:
        raise ImportRefused("--image-size takes H or H W")
    if not args.labels.is_file():
        raise ImportRefused(f"labels file {args.labels} not found")
    labels = read_labels(args.labels)
    finish = None
    if args.data:  # checked before anything is written; evaluated before the version is published
        check_data(args.data, labels)

        def finish(folder: Path, final: Path) -> None:
            evaluate_and_optimize(
                folder,
                args.data,
                calibration=args.calibration,
                limit=args.limit,
                precisions=[p for p in args.precisions.split(",") if p],
                log=print,
                shown=final,
            )

    try:
        path = import_model(
            args.path,
            labels=labels,
            name=args.name,
            image_size=args.image_size,
            preprocessing=args.preprocessing,
            outputs=args.outputs,
            models_dir=args.models_dir,
            version=args.version,
            command=command_line("import", [args.path, "--labels", args.labels, "--name", args.name]),
            finish=finish,
        )
    except FileExistsError as error:  # --version of an existing version: never overwritten
        raise ImportRefused(str(error)) from None
    metadata = read_metadata(path)
    print(
        f"imported {args.path} to {path}: {len(labels)} classes, {format_count(metadata['params'])} "
        f"parameters, {format_count(metadata['flops'])} multiply-adds at "
        f"{metadata['input_size'][0]}x{metadata['input_size'][1]}"
    )
    if args.data:
        top1 = metadata["metrics"]["top1"]
        print(f"held-out top-1 {top1:.4f} on the test split of {args.data}")
    else:
        print(
            "not evaluated, not optimized: the held-out metrics and the OpenVINO forms' accuracy gate "
            "need labelled images (--data FOLDER); metrics are recorded as unknown and the service's "
            "auto serves the SavedModel (tensorflow)"
        )
    print(f"inspect it: saved_model_cli show --dir {path} --all")
    return 0
