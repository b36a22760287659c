"""Training on several machines: ``TF_CONFIG`` (TensorFlow's cluster description) and the
``tf.distribute`` strategy ``fit`` trains under.

With ``TF_CONFIG`` naming more than one worker, every worker runs the same ``fit`` command under
``MultiWorkerMirroredStrategy`` (made to work with Keras 3's ``fit``: ``_keras_multi_worker_strategy``);
the chief (``chief`` task, else worker 0) writes the run folder. Without it: ``MirroredStrategy``
over several GPUs, else the default strategy. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import json
import os
from typing import Any

from service.config import cpu_count


def tf_config() -> dict:
    """``TF_CONFIG`` parsed (``{}`` when unset): ``{"cluster": {"worker": [...], "chief": [...]},
    "task": {"type": "worker", "index": 0}}``."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def cluster_workers(config: dict | None = None) -> int:
    """How many training processes TF_CONFIG names (chief and workers; 0 without TF_CONFIG)."""
    cluster = (tf_config() if config is None else config).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def is_chief() -> bool:
    """Whether this process writes the run: the ``chief`` task, else worker 0, else a lone process."""
    config = tf_config()
    task = config.get("task", {})
    if cluster_workers(config) <= 1 or task.get("type") == "chief":
        return True
    return (
        "chief" not in config.get("cluster", {}) and task.get("type") == "worker" and task.get("index") == 0
    )


def task_index() -> int:
    return int(tf_config().get("task", {}).get("index", 0))


def is_multi_worker(strategy: Any) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def shard_by_data(dataset: Any) -> Any:
    """Shard a dataset over the workers element by element (``DATA``): the folder pipelines read
    files from a list of paths, which TensorFlow's default (try ``FILE``, then fall back) would
    only warn about."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _keras_multi_worker_strategy(tf: Any) -> type:
    """``tf.distribute.MultiWorkerMirroredStrategy``, made to work with Keras 3's ``fit``.

    Keras 3 (3.15, TensorFlow backend) calls ``strategy.reduce`` in two ways that
    ``MultiWorkerMirroredStrategy`` refuses (keras-team/keras#20585, open):

    - before the first step (``_maybe_symbolic_build``) on the whole first batch, a tuple of
      per-replica tensors, to learn the shapes it builds the metrics with: the strategy reduces one
      tensor, not a structure ("Attempt to convert a value (PerReplica ...)"), and collective ops
      cannot reduce uint8 images at all;
    - after every step (``reduce_per_replica``) on each scalar metric with ``axis=0``, an axis a
      scalar does not have ("Invalid reduction dimension 0").

    This subclass reduces a structure tensor by tensor; a tensor of a type collective ops cannot
    reduce gives this worker's own value (all Keras uses it for: shapes and dtypes); a scalar is
    reduced across the workers without the axis (within one replica a scalar is its own mean).
    Everything else reduces exactly as before.
    """
    reducible = {tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64}

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            reduce_one = super().reduce

            def one(v: Any) -> Any:
                local = self.experimental_local_results(v)[0]
                if local.dtype not in reducible:
                    return local
                if axis is not None and local.shape.rank == 0:
                    return reduce_one(reduce_op, v, None)
                return reduce_one(reduce_op, v, axis)

            return tf.nest.map_structure(one, value)

    return KerasMultiWorkerMirroredStrategy


def choose_strategy() -> tuple[Any, str]:  # (tf.distribute.Strategy, description)
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers; else MirroredStrategy over
    several GPUs, else the default strategy; and a description."""
    import tensorflow as tf

    workers = cluster_workers()
    if workers > 1:
        task = tf_config().get("task", {})
        strategy = _keras_multi_worker_strategy(tf)()
        role = "chief" if is_chief() else "worker"
        return strategy, (
            f"MultiWorkerMirroredStrategy over {workers} workers ({strategy.num_replicas_in_sync} "
            f"replicas); this is {task.get('type')} {task.get('index')} ({role})"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"MirroredStrategy over {len(gpus)} GPUs"
    where = "1 GPU" if gpus else f"CPU ({cpu_count()} cores)"
    return tf.distribute.get_strategy(), f"default strategy on {where}"
