"""The end-to-end model: raw pixels in, class probabilities out.

    images (any size, uint8 or float 0..255)
      -> "resize"        Resizing to the training size (bilinear, antialiased, centre crop to aspect)
      -> augmentation    RandomFlip / Zoom / Translation / Rotation / RandAugment, training only
      -> scaling         the family's pixel scaling ("imagenet", "tf" or "unit")
      -> backbone        a zoo architecture returning logits
      -> "probabilities" float32 softmax (stays float32 under mixed precision)

Everything a client would otherwise have to reproduce lives in the graph, so an exported model takes
images as they are. ``resize_images`` is the very same resize op as the model's first layer; the data
pipeline and the export's bytes signature use it so that every path agrees numerically.

Batch-level MixUp / CutMix change the labels, so they are not in the model: ``training.data`` applies
them in the tf.data training pipeline, from the same ``Augmentation`` config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
from keras import layers

from training.architectures import create_model, model_info
from training.architectures.scaling import scaling_layers

# The resize every path uses (the model's first layer, the data pipeline, the export's bytes input).
RESIZE = {"interpolation": "bilinear", "crop_to_aspect_ratio": True, "antialias": True}


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; all zeros/False is no augmentation.

    Geometric factors follow Keras' layers: ``rotation`` is a fraction of a full turn, ``zoom`` and
    ``translation`` fractions of the image size. ``mixup`` / ``cutmix`` are Beta(alpha, alpha)
    parameters (0 disables); when both are set each batch gets one of them at random.
    """

    flip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    rand_augment: bool = False
    rand_augment_ops: int = 2
    rand_augment_factor: float = 0.5
    mixup: float = 0.0
    cutmix: float = 0.0

    @property
    def in_model(self) -> bool:
        """Whether any per-image (in-model) augmentation is enabled."""
        return bool(self.flip or self.rotation or self.zoom or self.translation or self.rand_augment)

    @property
    def mixes_batches(self) -> bool:
        """Whether the tf.data pipeline mixes images and labels across the batch."""
        return bool(self.mixup or self.cutmix)

    def replace(self, **changes) -> Augmentation:
        return dataclasses.replace(self, **changes)


AUGMENTATION_PRESETS: dict[str, Augmentation] = {
    "none": Augmentation(),
    "light": Augmentation(flip=True, zoom=0.1, translation=0.1),
    "medium": Augmentation(flip=True, zoom=0.1, translation=0.1, rotation=0.05, rand_augment=True),
    "strong": Augmentation(
        flip=True, zoom=0.1, translation=0.1, rotation=0.05, rand_augment=True, mixup=0.2, cutmix=1.0
    ),
}


def augmentation_preset(name: str) -> Augmentation:
    """The named preset (``none``, ``light``, ``medium``, ``strong``)."""
    try:
        return AUGMENTATION_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENTATION_PRESETS)}"
        ) from None


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``128`` or ``(128, 160)`` -> ``(height, width)``."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def resize_layer(image_size: int | tuple[int, int], name: str = "resize") -> layers.Resizing:
    """The Resizing layer every path shares (float32 even under a mixed-precision policy)."""
    height, width = image_hw(image_size)
    return layers.Resizing(height, width, **RESIZE, dtype="float32", name=name)


def resize_images(images, image_size: int | tuple[int, int]):
    """Resize one image ``[h, w, 3]`` or a batch ``[n, h, w, 3]`` exactly as the model does.

    Returns float32 pixels in 0..255 (a tensor of the Keras backend, a ``tf.Tensor`` inside tf.data).
    The input is cast to float32 first: Keras resizes uint8 eagerly back to uint8 but not in graph
    mode, and the model always resizes float32.
    """
    return resize_layer(image_size)(keras.ops.cast(images, "float32"))


def augmentation_layers(aug: Augmentation, seed: int | None = None) -> list[layers.Layer]:
    """Keras' own random layers for ``aug``, on float32 pixels 0..255; inactive unless training."""
    seeds = iter(range(seed, seed + 8)) if seed is not None else iter([None] * 8)

    def common(name):  # float32 even under mixed precision: these work on 0..255 pixels
        return {"seed": next(seeds), "dtype": "float32", "name": name}

    stack = []
    if aug.flip:
        stack.append(layers.RandomFlip("horizontal", **common("flip")))
    if aug.rotation:
        stack.append(layers.RandomRotation(aug.rotation, **common("rotation")))
    if aug.zoom:
        stack.append(layers.RandomZoom(aug.zoom, aug.zoom, **common("zoom")))
    if aug.translation:
        stack.append(layers.RandomTranslation(aug.translation, aug.translation, **common("translation")))
    if aug.rand_augment:
        stack.append(
            layers.RandAugment(
                value_range=(0, 255),
                num_ops=aug.rand_augment_ops,
                factor=aug.rand_augment_factor,
                **common("rand_augment"),
            )
        )
    return stack


def build_end_to_end(
    arch: str | keras.Model,
    *,
    num_classes: int,
    image_size: int | tuple[int, int],
    augmentation: Augmentation | None = None,
    arch_options: dict | None = None,
    name: str | None = None,
    preprocessing: str | None = "registry",
    seed: int | None = None,
    weights: str | None = None,
) -> keras.Model:
    """Wrap a backbone with resize, augmentation, scaling and a float32 softmax.

    ``arch`` is a registry name (the backbone is built at ``image_size`` with logits out, its
    scaling taken from ``model_info(arch).preprocessing``) or an already-built backbone
    ``keras.Model`` returning logits for ``[batch, h, w, 3]`` at ``image_size``; then pass
    ``preprocessing="imagenet"|"tf"|"unit"|None`` explicitly. ``seed`` seeds the augmentation layers.

    ``weights`` (``"imagenet"`` or a weights file of the keras.applications twin, see
    ``training.architectures.weights``): the backbone starts from them (a new classifier unless
    ``num_classes == 1000``) and the scaling is the one those weights expect (keras'
    ``preprocess_input`` of the family: caffe, tf, torch, or the twin's own in-model layers).
    """
    height, width = image_hw(image_size)
    scaling = None
    if weights is not None:
        if not isinstance(arch, str):
            raise ValueError("weights apply to a registry name, not to a prebuilt backbone")
        if preprocessing != "registry":
            raise ValueError("with pretrained weights the preprocessing is the weights' own: leave it out")
        from training.architectures.weights import load_pretrained

        backbone, scaling = load_pretrained(
            arch,
            weights,
            num_classes=num_classes,
            input_shape=(height, width, 3),
            classifier_activation=None,
            **(arch_options or {}),
        )
        name = name or f"{arch}_end_to_end"
    elif isinstance(arch, str):
        if preprocessing == "registry":
            preprocessing = model_info(arch).preprocessing
        backbone = create_model(
            arch,
            num_classes=num_classes,
            input_shape=(height, width, 3),
            classifier_activation=None,
            **(arch_options or {}),
        )
        name = name or f"{arch}_end_to_end"
    else:
        if preprocessing == "registry":
            raise ValueError("a prebuilt backbone needs preprocessing='imagenet'|'tf'|'unit'|None")
        if arch_options:
            raise ValueError("arch_options only apply when arch is a registry name")
        backbone = arch
        name = name or f"{backbone.name}_end_to_end"

    inputs = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = resize_layer((height, width))(inputs)
    for layer in augmentation_layers(augmentation or Augmentation(), seed):
        x = layer(x)
    for layer in scaling if scaling is not None else scaling_layers(preprocessing):
        x = layer(x)
    logits = backbone(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name)
