"""MixUp and CutMix of whole batches with Keras' own layers: one definition for both trainers.

``fit`` mixes its tf.data batches (``training.data.pipeline``), ``fit-packed`` its NumPy batches
on any Keras backend (``training.fit_packed.Batches``); both call ``mix`` with the layers of
``batch_mixers``, so ``--augment strong`` means the same on either trainer:

- MixUp (Zhang et al. 2018): ``keras.layers.MixUp(alpha)``, a mixing weight per sample drawn from
  Beta(alpha, alpha), images and one-hot labels mixed with the same weight;
- CutMix (Yun et al. 2019): ``keras.layers.CutMix(factor)``, a box per sample pasted from another
  sample of the batch, labels mixed in proportion to the pixels each image contributes;
- with both enabled, one of the two at random for each batch (``mix_one``: MixUp when a uniform
  draw in [0, 1) is below 0.5, else CutMix; the trainer draws it with its own random source).

TensorFlow is not imported here (``fit-packed`` runs where it is absent).
"""

from __future__ import annotations

import keras


def batch_mixers(mixup: float, cutmix: float, seed: int = 0) -> list[keras.layers.Layer]:
    """The enabled mixers, MixUp first: ``mixup`` is MixUp's alpha, ``cutmix`` CutMix's factor.

    They compute in float32 whatever the global policy (``fit-packed --mixed-precision`` sets
    ``mixed_bfloat16``, under which Keras' MixUp and CutMix fail on their own float32 inputs);
    the model casts their output to its compute dtype."""
    mixers = []
    if mixup:
        mixers.append(keras.layers.MixUp(alpha=mixup, seed=seed, dtype="float32"))
    if cutmix:
        mixers.append(keras.layers.CutMix(factor=cutmix, seed=seed + 1, dtype="float32"))
    if not mixers:
        raise ValueError("batch mixing needs mixup or cutmix > 0")
    return mixers


def mix(mixer: keras.layers.Layer, images, labels):
    """``(images, labels)`` of a batch mixed by ``mixer`` (float32 images, one-hot labels)."""
    mixed = mixer({"images": keras.ops.cast(images, "float32"), "labels": labels}, training=True)
    return mixed["images"], mixed["labels"]


def mix_one(mixers: list[keras.layers.Layer], images, labels, draw):
    """``(images, labels)`` mixed by one of ``mixers`` (``batch_mixers``): the first when the uniform
    ``draw`` in [0, 1) is below 0.5, else the second. ``draw`` is a Python float (NumPy batches) or
    a scalar tensor (inside a tf.data map, where the choice becomes a ``cond``)."""
    if len(mixers) == 1:
        return mix(mixers[0], images, labels)
    if isinstance(draw, (int, float)):
        return mix(mixers[0] if draw < 0.5 else mixers[1], images, labels)
    return keras.ops.cond(
        draw < 0.5, lambda: mix(mixers[0], images, labels), lambda: mix(mixers[1], images, labels)
    )
