"""Count a model's FLOPs, reported as multiply-adds (MACs) for one image.

Papers quote "FLOPs" as multiply-adds (ResNet-50: 3.8–4.1 G); TensorFlow's profiler counts a
multiply and an add as two float operations. We freeze the model's forward pass for a batch of one
into a graph, let ``tf.compat.v1.profiler`` count its float operations and halve the total, so our
figures are comparable with the papers' tables.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2_as_graph,
)


def count_flops(model: keras.Model, input_shape: tuple[int, ...] | None = None) -> int:
    """Multiply-adds for one forward pass of ``model`` on a single image (inference mode).

    ``input_shape`` is (height, width, channels); it defaults to the model's own input shape,
    which must then be fully defined.
    """
    shape = tuple(input_shape) if input_shape is not None else tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"{model.name} takes images of any size {shape}: pass input_shape=(h, w, c) to count FLOPs"
        )
    dtype = model.inputs[0].dtype
    forward = tf.function(lambda x: model(x, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec((1, *shape), dtype))
    _, graph_def = convert_variables_to_constants_v2_as_graph(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    verbosity = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler warns about its own deprecated helpers
    try:
        with tf.Graph().as_default() as graph:
            tf.graph_util.import_graph_def(graph_def, name="")
            profile = tf.compat.v1.profiler.profile(
                graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
            )
    finally:
        tf.get_logger().setLevel(verbosity)
    return int(profile.total_float_ops) // 2


def format_count(n: float) -> str:
    """1234567 -> '1.23 M' (for tables)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))
