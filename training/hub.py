"""Wrap a TF Hub image model end-to-end (resize + scaling + softmax) and export it.

As published (an ImageNet-1k classifier returning logits; labels default to ImageNet-1k names):

    python -m training hub https://tfhub.dev/sayakpaul/convnext_tiny_1k_224/1 --name convnext_tiny_hub

Fine-tuned: with ``--data`` the hub model (a feature vector by default,
``.../convnext_tiny_1k_224_fe/1``) is frozen and a new Dense head is trained on the dataset with
``training.data`` and ``training.kit``'s optimizer / loss / metrics, evaluated on the held-out split:

    python -m training hub --name convnext_tiny_imagenette \\
        --data /work/shared/data/imagenette2-train --epochs 3 --batch-size 32

``--fine-tune`` then unfreezes the hub model and trains end to end (``--fine-tune-epochs``, at
``--fine-tune-lr``, default a tenth of ``--lr``): the warm-up-then-unfreeze recipe of Keras'
transfer-learning guide.

Either way the model goes through ``training.export.export_model`` (both signatures, metadata).

Where models come from: ``tensorflow_hub`` downloads a handle (a tfhub.dev / Kaggle URL) once into
``$TFHUB_CACHE_DIR`` (default: ``tfhub_modules`` in the system temp folder) and loads it from there;
set ``TFHUB_CACHE_DIR`` to a lasting folder to keep it. A local path to an unpacked TF2 SavedModel
folder is loaded as it is (the way to use a model on a machine without network: download the
model's ``.tar.gz`` elsewhere and unpack it). The model must be a TF2 SavedModel whose ``__call__``
takes float32 images ``[batch, size, size, 3]`` and returns logits or features ``[batch, n]``.

Keras 3 note: ``hub.KerasLayer`` is a tf-keras (Keras 2) layer and cannot sit in a Keras 3 model,
so ``HubModel`` wraps ``hub.load(handle)`` in a small Keras 3 layer, always frozen.

ConvNeXt preprocessing (sayakpaul/ConvNeXt-TF, the models' own notebooks): RGB pixels scaled to
[0, 1] and normalized with the ImageNet mean / std ("imagenet" here), 224x224 inputs. The published
recipe resizes to 256 (bicubic) and center-crops 224; ours resizes once (bilinear, antialiased,
center crop to the aspect ratio), the resize every convzoo path shares.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_hub as hub

from training.cli import args_argv, command_line
from training.data import SplitFractions, load_data
from training.end_to_end import augmentation_preset, build_end_to_end
from training.export import export_model
from training.kit import compile_model
from training.labels import imagenet1k_labels
from training.portable import portable_path
from training.recipe import Recipe

CLASSIFIER_HANDLE = "https://tfhub.dev/sayakpaul/convnext_tiny_1k_224/1"
FEATURE_VECTOR_HANDLE = "https://tfhub.dev/sayakpaul/convnext_tiny_1k_224_fe/1"
SCALINGS = ("imagenet", "tf", "unit", "none")  # training.architectures.scaling; "none": as is


@keras.saving.register_keras_serializable(package="convzoo")
class HubModel(keras.layers.Layer):
    """A TF2 SavedModel from TF Hub (handle or local folder) as a Keras 3 layer, frozen by default.

    Its variables stay TensorFlow variables of the loaded module (not Keras weights): nothing
    trains them, and an export through ``keras.export.ExportArchive`` saves them with the model
    because the serving functions read them.

    ``fine_tunable=True`` (``hub --fine-tune``): the module's ``trainable_variables`` (the Reusable
    SavedModel API that hub.KerasLayer also reads; Keras-made SavedModels such as the published
    ConvNeXt have it) become this layer's trainable weights: Keras variables backed by the very
    ``tf.Variable`` objects the module reads, so gradients reach them and the optimizer's updates
    are what the module computes with. They train only once the layer is made ``trainable``.
    BatchNormalization inside a Keras-made module stays in inference mode (``training=False``).
    """

    def __init__(self, handle: str, fine_tunable: bool = False, **kwargs):
        kwargs["trainable"] = bool(kwargs.get("trainable", False) and fine_tunable)
        kwargs.setdefault("dtype", "float32")  # the module computes in float32
        super().__init__(**kwargs)
        self.handle = str(handle)
        self.fine_tunable = bool(fine_tunable)
        try:
            self.module = hub.load(self.handle)
        except OSError as error:  # no network, unknown handle, missing folder
            raise OSError(
                f"could not load {self.handle} ({error}); offline, pass the unpacked SavedModel "
                "folder instead, or set TFHUB_CACHE_DIR to a cache that holds it"
            ) from error
        if not callable(self.module):
            raise ValueError(f"{self.handle} has no __call__ function: not a TF2 image model")
        self.takes_training = "training" in inspect.signature(self.module.__call__).parameters
        if self.fine_tunable:
            # Tracked as trainable variables, then frozen with the layer (Keras' setter flips them).
            self.hub_variables = [_adopt(v) for v in self._module_variables()]
            for variable in self.hub_variables:
                variable.trainable = self.trainable

    def _module_variables(self) -> list:
        variables = list(getattr(self.module, "trainable_variables", None) or [])
        if not variables:
            raise ValueError(
                f"{self.handle} exposes no trainable_variables (TF Hub's Reusable SavedModel API), "
                "so it cannot be fine-tuned; train a new head on it without --fine-tune"
            )
        return variables

    def call(self, images):
        # Keras-made SavedModels take `training`: run BatchNorm / dropout in inference mode.
        outputs = self.module(images, training=False) if self.takes_training else self.module(images)
        if not isinstance(outputs, tf.Tensor):
            raise ValueError(f"{self.handle} returns {type(outputs).__name__}, expected one tensor")
        return outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "handle": self.handle, "fine_tunable": self.fine_tunable}


def _adopt(variable: tf.Variable) -> keras.Variable:
    """A trainable Keras variable whose storage is ``variable`` itself (not a copy)."""
    wrapper = keras.Variable(
        initializer="zeros",
        shape=variable.shape,
        dtype=variable.dtype.name,
        trainable=True,
        name=variable.name.split(":")[0].replace("/", "_"),
    )
    wrapper._value = variable  # the TensorFlow backend's Variable reads and assigns its _value
    return wrapper


def build_hub_model(
    handle: str,
    *,
    image_size: int,
    preprocessing: str | None = "imagenet",
    num_classes: int | None = None,
    augmentation=None,
    name: str = "hub",
    seed: int | None = None,
    fine_tunable: bool = False,
) -> keras.Model:
    """End-to-end model around a hub model: raw pixels in, float32 probabilities out.

    Without ``num_classes`` the hub model's outputs are the logits (a classifier as published);
    with it a new Dense head of that many classes is put on the hub model's outputs (features).
    """
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    outputs = HubModel(handle, fine_tunable=fine_tunable, name="hub")(pixels)
    if len(outputs.shape) != 2:
        raise ValueError(f"{handle} returns shape {outputs.shape}; expected [batch, n]")
    if num_classes is not None:
        outputs = keras.layers.Dense(num_classes, name="head")(outputs)
    backbone = keras.Model(pixels, outputs, name=f"{name}_backbone")
    return build_end_to_end(
        backbone,
        num_classes=outputs.shape[-1],
        image_size=image_size,
        augmentation=augmentation,
        preprocessing=preprocessing,
        name=name,
        seed=seed,
    )


def read_labels(path: str | Path) -> list[str]:
    """One class name per line, in output order (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- command line

# The Recipe fields `hub --data` takes as flags, with hub's defaults and help where they differ.
HUB_RECIPE = (
    "data",
    "labels_map",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "label_smoothing",
    "augment",
    "jit_compile",
    "validation_fraction",
    "test_fraction",
    "limit",
    "seed",
)
HUB_DEFAULTS = {"data": None, "epochs": 3, "batch_size": 32, "optimizer": "adam", "jit_compile": "off"}
HUB_HELP = {
    "data": "folder of class sub-folders, or 'imagenette' (TensorFlow Datasets)",
    "lr": None,
    "seed": None,
    "batch_size": None,
    "validation_fraction": None,
    "test_fraction": None,
    "jit_compile": "XLA for the training step",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p(
        "handle",
        nargs="?",
        help=f"TF Hub handle or local SavedModel folder (default: {CLASSIFIER_HANDLE}, "
        f"or with --data {FEATURE_VECTOR_HANDLE})",
    )
    p("--name", default="convnext_tiny_hub", help="model name in the repository")
    p(
        "--labels",
        help="class names, one per line in output order (default: ImageNet-1k names "
        "for a 1000-class model); only without --data",
    )
    Recipe.add_arguments(
        parser,
        only=("image_size",),
        defaults={"image_size": 224},
        help={"image_size": "square input size the hub model takes"},
    )
    p(
        "--preprocessing",
        choices=SCALINGS,
        default="imagenet",
        help="pixel scaling the hub model expects (ConvNeXt: imagenet; most Google models: unit)",
    )
    p("--dataset", default="imagenet-1k", help="what the published model was trained on (metadata)")
    p("--models-dir", default="models")
    p("--version", type=int, help="version number (default: the next one); never overwrites")
    fine_tune = parser.add_argument_group("fine-tuning a new head (with --data)")
    Recipe.add_arguments(fine_tune, only=HUB_RECIPE, defaults=HUB_DEFAULTS, help=HUB_HELP)
    f = fine_tune.add_argument
    f(
        "--fine-tune",
        action="store_true",
        help="after the head's --epochs, unfreeze the hub model "
        "and train everything (--fine-tune-epochs at --fine-tune-lr)",
    )
    f("--fine-tune-epochs", type=int, help="epochs of the unfrozen phase (default: --epochs)")
    f("--fine-tune-lr", type=float, help="learning rate of the unfrozen phase (default: --lr / 10)")


def main(args: argparse.Namespace) -> int:
    try:
        path, handle = wrap_and_export(args)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {handle} to {path}")
    print(f"inspect it: saved_model_cli show --dir {path} --all")
    return 0


def wrap_and_export(args: argparse.Namespace) -> tuple[Path, str]:
    """Build (and with --data fine-tune) the model, export it; returns its folder and the handle."""
    preprocessing = None if args.preprocessing == "none" else args.preprocessing
    if args.data:
        if args.labels:
            raise ValueError(
                "--labels names a published classifier's outputs; with --data the "
                "labels come from the dataset (see --labels-map)"
            )
        handle = args.handle or FEATURE_VECTOR_HANDLE
        model, details = fine_tune(
            Recipe.from_args(args, arch=f"tfhub:{handle}"), args, handle, preprocessing
        )
    else:
        handle = args.handle or CLASSIFIER_HANDLE
        model = build_hub_model(
            handle, image_size=args.image_size, preprocessing=preprocessing, name=args.name
        )
        details = as_published(args, model)
    path = export_model(
        model,
        name=args.name,
        input_size=args.image_size,
        architecture=f"tfhub:{portable_path(handle) if Path(handle).exists() else handle}",
        command=command_line("hub", args_argv(add_arguments, args, positionals=("handle",))),
        models_dir=args.models_dir,
        version=args.version,
        **details,
    )
    return path, handle


def as_published(args: argparse.Namespace, model: keras.Model) -> dict:
    """Labels, dataset and metrics for exporting a hub classifier unchanged (not evaluated here)."""
    classes = model.outputs[0].shape[-1]
    if args.labels:
        labels = read_labels(args.labels)
    elif classes == 1000:
        labels = imagenet1k_labels()
    else:
        raise ValueError(f"the model has {classes} outputs; pass --labels FILE (one name per line)")
    return {
        "labels": labels,
        "dataset": args.dataset,
        "metrics": {"top1": None, "top5": None},
        "extra": {"metrics_note": "published model exported unchanged; not evaluated here"},
    }


def fine_tune(
    recipe: Recipe, args: argparse.Namespace, handle: str, preprocessing: str | None
) -> tuple[keras.Model, dict]:
    """Train a Dense head over the frozen hub model as ``recipe`` says (``args``: hub's own flags,
    --fine-tune...); returns the model and its export details."""
    keras.utils.set_random_seed(recipe.seed)
    fractions = SplitFractions(recipe.validation_fraction, recipe.test_fraction, recipe.seed)
    data = load_data(
        recipe.data, recipe.image_size, fractions=fractions, labels_map=recipe.labels_map, limit=recipe.limit
    )
    print(data.describe())
    augmentation = augmentation_preset(recipe.augment)
    batches = data.batches(recipe.batch_size, augmentation, seed=recipe.seed)
    model = build_hub_model(
        handle,
        image_size=recipe.image_size,
        preprocessing=preprocessing,
        num_classes=data.num_classes,
        augmentation=augmentation,
        name=recipe.name,
        seed=recipe.seed,
        fine_tunable=bool(getattr(args, "fine_tune", False)),
    )
    config = {
        "optimizer": recipe.optimizer,
        "learning_rate": recipe.lr,
        "weight_decay": None,
        "epochs": recipe.epochs,
        "warmup_epochs": 0.0,
        "label_smoothing": recipe.label_smoothing,
        "jit_compile": recipe.jit_compile,
    }
    compile_model(model, config, steps_per_epoch=math.ceil(data.sizes["train"] / recipe.batch_size))
    trainable = sum(int(tf.size(w)) for w in model.trainable_weights)
    print(f"training a new head ({trainable:,} parameters) over the frozen hub model")
    model.fit(batches["train"], validation_data=batches["validation"], epochs=recipe.epochs, verbose=2)
    extra = {}
    if getattr(args, "fine_tune", False):
        extra["backbone"] = unfreeze_and_train(model, config, batches, data.sizes["train"], args)
    scores = model.evaluate(batches["test"], return_dict=True, verbose=0)
    metrics = {"top1": float(scores["top1"]), "top5": float(scores["top5"])}
    print(
        f"held-out test: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} "
        f"on {data.sizes['test']} images"
    )
    return model, {
        "labels": list(data.labels),
        "dataset": data.name,
        "metrics": metrics,
        "extra": {"fine_tuning": {**config, "splits": data.sizes, "augment": recipe.augment, **extra}},
    }


def hub_layer(model: keras.Model) -> HubModel:
    """The ``HubModel`` inside a ``build_hub_model`` model."""
    return next(
        layer for layer in model.get_layer(f"{model.name}_backbone").layers if isinstance(layer, HubModel)
    )


def unfreeze_and_train(model: keras.Model, config: dict, batches: dict, train_size: int, args) -> dict:
    """The fine-tuning phase after the head's warm-up (Keras' transfer-learning guide): the hub
    model unfrozen, recompiled at a lower learning rate, everything trained; returns its settings."""
    epochs = args.fine_tune_epochs if args.fine_tune_epochs is not None else args.epochs
    lr = args.fine_tune_lr if args.fine_tune_lr is not None else args.lr / 10
    hub_layer(model).trainable = True
    phase = {**config, "learning_rate": lr, "epochs": epochs}
    compile_model(
        model, phase, steps_per_epoch=math.ceil(train_size / args.batch_size)
    )  # recompile: new trainables
    trainable = sum(int(tf.size(w)) for w in model.trainable_weights)
    print(
        f"fine-tuning everything ({trainable:,} parameters, hub model unfrozen) "
        f"at lr {lr:g} for {epochs} epochs"
    )
    if epochs:
        model.fit(batches["train"], validation_data=batches["validation"], epochs=epochs, verbose=2)
    return {"unfrozen_epochs": epochs, "learning_rate": lr, "trainable_parameters": trainable}
