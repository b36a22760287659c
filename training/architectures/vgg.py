"""VGG: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv 2014; table 1, configurations D and E).

    5 stages of 3x3 convolutions (64, 128, 256, 512, 512 filters), each closed by a 2x2 max pool
    -> fc 4096 -> dropout -> fc 4096 -> dropout -> classifier

Same layers and parameter counts as ``keras.applications.VGG16`` / ``VGG19`` (138,357,544 and
143,667,240 with 1000 classes at 224x224), plus the paper's dropout (0.5) after the first two
fully connected layers. No local response normalization (the paper found it did not help).
The fully connected head reads the flattened last stage, so its size depends on the input size.
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, model_input

STAGE_FILTERS = (64, 128, 256, 512, 512)

# Convolutions per stage, table 1 of the paper.
VGG_DEPTHS = {
    "vgg16": (2, 2, 3, 3, 3),  # configuration D
    "vgg19": (2, 2, 4, 4, 4),  # configuration E
}


def vgg_stage(x, filters: int, convs: int, *, name: str):
    """``convs`` 3x3 convolutions with ReLU, then a 2x2 max pool."""
    for index in range(1, convs + 1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv{index}")(x)
    return layers.MaxPooling2D(2, strides=2, name=f"{name}_pool")(x)


def vgg(num_classes, input_shape, name, *, depths, dropout, classifier_activation="softmax"):
    """VGG with ``depths[i]`` convolutions in stage ``i + 1`` and the paper's 4096-wide head."""
    inputs = model_input(input_shape)
    x = inputs
    for stage, (filters, convs) in enumerate(zip(STAGE_FILTERS, depths, strict=True), start=1):
        x = vgg_stage(x, filters, convs, name=f"block{stage}")
    x = layers.Flatten(name="flatten")(x)
    for fc in ("fc1", "fc2"):
        x = layers.Dense(4096, activation="relu", name=fc)(x)
        x = layers.Dropout(dropout, name=f"{fc}_dropout")(x)
    outputs = classifier_head(x, num_classes, name=name, activation=classifier_activation, pool=False)
    return keras.Model(inputs, outputs, name=name)


for _name, _depths in VGG_DEPTHS.items():
    register_model(
        _name,
        family="vgg",
        year=2014,
        paper=(
            "Very Deep Convolutional Networks for Large-Scale Image Recognition (Simonyan & Zisserman, 2014)"
        ),
        input_shape=(224, 224, 3),
        min_size=32,
        keras_application=_name.upper(),
        preprocessing="imagenet",
        depths=_depths,
        dropout=0.5,
    )(vgg)
