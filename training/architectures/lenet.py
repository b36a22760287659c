"""LeNet-5: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 1998 (section II.B, figure 2, table I).

    C1 conv 6@5x5 -> S2 subsample -> C3 conv 16@5x5 (partial connection table)
    -> S4 subsample -> C5 conv 120@5x5 -> F6 dense 84 -> output

Faithful to the paper where it counts parameters:
- S2/S4 are the paper's *trainable* subsampling: the 2x2 average times a per-map coefficient plus a
  per-map bias (an AveragePooling2D then a 1x1 DepthwiseConv2D), then the squashing function;
- C3 connects each of its 16 maps to a subset of S2's 6 maps (table I) with
  ``ConnectionTableConv2D``: 1,516 weights and 151,600 connections, instead of 2,416 and
  240,000 for a full convolution.

Parameter figure matched: the paper's "60,000 trainable parameters" are exactly C1..F6
(156 + 12 + 1,516 + 32 + 48,120 + 10,164 = 60,000); its output layer of Euclidean RBF units
had hand-set weights. Ours replaces that layer by a trainable ``Dense(num_classes)`` (850 weights
for 10 classes), so the model has 60,850 parameters at 32x32x1.

Differences: tanh instead of the paper's scaled 1.7159 * tanh(2a/3); softmax/logits instead of RBF
outputs. The valid 5x5 convolutions need at least 32x32 input; at larger inputs C5 is wider than
1x1 and F6 grows with it (flattened), as the paper describes.
"""

from __future__ import annotations

import keras
from keras import layers

from training.architectures._registry import register_model
from training.architectures.common import classifier_head, model_input

# Table I: which S2 maps (columns 0-5) feed each of C3's 16 maps.
C3_CONNECTIONS = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (0, 4, 5),
    (0, 1, 5),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (0, 3, 4, 5),
    (0, 1, 4, 5),
    (0, 1, 2, 5),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


@keras.saving.register_keras_serializable(package="convzoo")
class ConnectionTableConv2D(layers.Layer):
    """A valid convolution where output map ``o`` only sees the input maps in ``connections[o]``.

    Each output map has its own ``kernel_size x kernel_size x len(connections[o])`` kernel and a
    bias, so the layer has ``sum(len(c) for c in connections) * kh * kw + len(connections)``
    weights and as many multiply-adds per pixel as the paper's "connections".
    """

    def __init__(self, connections, kernel_size: int = 5, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.connections = tuple(tuple(int(i) for i in c) for c in connections)
        self.kernel_size = kernel_size
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        in_maps = input_shape[-1]
        if max(max(c) for c in self.connections) >= in_maps:
            raise ValueError(f"{self.name}: connection table refers to maps beyond the {in_maps} inputs")
        self.kernels = []
        for index, inputs in enumerate(self.connections):
            fan_in = self.kernel_size**2 * len(inputs)
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{index}",
                    shape=(self.kernel_size, self.kernel_size, len(inputs), 1),
                    # LeCun's uniform initialisation, variance 1 / fan-in.
                    initializer=keras.initializers.RandomUniform(-((3 / fan_in) ** 0.5), (3 / fan_in) ** 0.5),
                )
            )
        self.bias = self.add_weight(name="bias", shape=(len(self.connections),), initializer="zeros")

    def call(self, x):
        maps = [
            keras.ops.conv(keras.ops.take(x, list(inputs), axis=-1), kernel, padding="valid")
            for inputs, kernel in zip(self.connections, self.kernels, strict=True)
        ]
        return self.activation(keras.ops.concatenate(maps, axis=-1) + self.bias)

    def compute_output_shape(self, input_shape):
        shrink = self.kernel_size - 1
        height, width = (None if d is None else d - shrink for d in input_shape[1:3])
        return (input_shape[0], height, width, len(self.connections))

    def get_config(self):
        return {
            **super().get_config(),
            "connections": [list(c) for c in self.connections],
            "kernel_size": self.kernel_size,
            "activation": keras.activations.serialize(self.activation),
        }


def trainable_subsampling(x, *, name: str):
    """S2/S4: average of each 2x2 window, times a trainable per-map coefficient, plus a bias, tanh."""
    x = layers.AveragePooling2D(2, name=f"{name}_pool")(x)
    x = layers.DepthwiseConv2D(1, name=f"{name}_scale")(x)
    return layers.Activation("tanh", name=f"{name}_tanh")(x)


@register_model(
    "lenet5",
    family="lenet",
    year=1998,
    paper="Gradient-Based Learning Applied to Document Recognition (LeCun et al., 1998)",
    input_shape=(32, 32, 1),
    min_size=32,
    keras_application=None,
    preprocessing="tf",
)
def lenet5(num_classes, input_shape, name, *, classifier_activation="softmax"):
    """LeNet-5 (figure 2 of the paper): C1-S2-C3-S4-C5-F6 and a classifier."""
    inputs = model_input(input_shape)
    x = layers.Conv2D(6, 5, activation="tanh", name="c1_conv")(inputs)
    x = trainable_subsampling(x, name="s2")
    x = ConnectionTableConv2D(C3_CONNECTIONS, 5, activation="tanh", name="c3_conv")(x)
    x = trainable_subsampling(x, name="s4")
    x = layers.Conv2D(120, 5, activation="tanh", name="c5_conv")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(84, activation="tanh", name="f6")(x)
    outputs = classifier_head(x, num_classes, name=name, activation=classifier_activation, pool=False)
    return keras.Model(inputs, outputs, name=name)
