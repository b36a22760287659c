"""Fine-tuning a pretrained backbone: a frozen warm-up, then everything at two learning rates.

The recipe of Keras' transfer-learning guide (https://keras.io/guides/transfer_learning/), as
``python -m training fit`` / ``fit-packed`` apply it with ``--weights imagenet|PATH``:

1. ``--freeze-epochs N``: the first N epochs train the new classifier only; the backbone is frozen
   (``trainable = False``, so its weights do not change and its BatchNormalization layers run in
   inference mode: in Keras 3 a non-trainable BatchNormalization uses its moving statistics);
2. then the whole network trains, the backbone at ``--backbone-lr-scale`` (default 0.1) times the
   learning rate of the head (the classifier, ``predictions``). BatchNormalization stays in
   inference mode (frozen) throughout, as the guide prescribes for fine-tuning: small batches of
   a new dataset would otherwise overwrite the statistics the weights were trained with.

The switch is a callback (``FineTuneSchedule``) that sets each epoch's phase at its start, so a
resumed run (``training.backup``) continues in the right phase. The per-group learning rates are an
optimizer subclass per Keras optimizer (``FineTuneAdamW`` ...) whose ``update_step`` scales the rate
of every variable outside the head; ``training.runs.load_checkpoint`` loads checkpoints with them
(``custom_objects``). Decoupled weight decay (AdamW) stays at the head's rate. Dropout / stochastic
depth inside the backbone stay active while training, frozen or not (they have no weights).
"""

from __future__ import annotations

import keras

BACKBONE_LR_SCALE = 0.1
HEAD_LAYER = "predictions"


def _two_rates(base: type) -> type:
    class TwoRates(base):
        """``base`` with the learning rate of non-head variables scaled by ``backbone_lr_scale``."""

        def __init__(self, *args, backbone_lr_scale: float = BACKBONE_LR_SCALE, head_variables=(), **kwargs):
            super().__init__(*args, **kwargs)
            self.backbone_lr_scale = float(backbone_lr_scale)
            self.head_variables = list(head_variables)

        def is_head(self, variable) -> bool:
            """Whether ``variable`` (a Keras variable, or the backend's own: TensorFlow passes
            ``tf.Variable``s to ``update_step``) is one of ``head_variables``, by the optimizer's key."""
            head = set(self.head_variables)
            keys = {self._var_key(v) for v in self._trainable_variables if v.path in head}
            return self._var_key(variable) in keys

        def update_step(self, gradient, variable, learning_rate):
            if not self.is_head(variable):  # decided while tracing: no cost per step
                learning_rate = learning_rate * self.backbone_lr_scale
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {
                **super().get_config(),
                "backbone_lr_scale": self.backbone_lr_scale,
                "head_variables": list(self.head_variables),
            }

    TwoRates.__name__ = TwoRates.__qualname__ = f"FineTune{base.__name__}"
    return keras.saving.register_keras_serializable(package="convzoo")(TwoRates)


FineTuneAdam = _two_rates(keras.optimizers.Adam)
FineTuneAdamW = _two_rates(keras.optimizers.AdamW)
FineTuneSGD = _two_rates(keras.optimizers.SGD)
FineTuneRMSprop = _two_rates(keras.optimizers.RMSprop)

OPTIMIZERS = {
    "adam": (keras.optimizers.Adam, FineTuneAdam),
    "adamw": (keras.optimizers.AdamW, FineTuneAdamW),
    "sgd": (keras.optimizers.SGD, FineTuneSGD),
    "rmsprop": (keras.optimizers.RMSprop, FineTuneRMSprop),
}


def custom_objects() -> dict:
    """The two-rate optimizers by class name, for loading a fine-tuned checkpoint."""
    return {two_rates.__name__: two_rates for _, two_rates in OPTIMIZERS.values()}


def fine_tuning(config: dict) -> bool:
    """Whether a run configuration starts from pretrained weights."""
    return bool(config.get("weights"))


def optimizer_class(config: dict, name: str) -> tuple[type, dict]:
    """The optimizer class for ``name`` and its extra arguments (two rates when fine-tuning)."""
    plain, two_rates = OPTIMIZERS[name]
    if not fine_tuning(config):
        return plain, {}
    return two_rates, {"backbone_lr_scale": config.get("backbone_lr_scale", BACKBONE_LR_SCALE)}


def backbone_of(model: keras.Model) -> keras.Model:
    """The zoo backbone nested in an end-to-end model (or ``model`` itself when it is one)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1:
        return nested[0]
    if any(layer.name == HEAD_LAYER for layer in model.layers):
        return model
    raise ValueError(f"{model.name}: expected one nested backbone with a {HEAD_LAYER!r} layer")


def set_phase(model: keras.Model, frozen: bool) -> None:
    """Frozen: only the head trains. Unfrozen: everything but BatchNormalization (inference mode)."""
    for layer in backbone_of(model).layers:
        if layer.name == HEAD_LAYER:
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = not frozen


def prepare(model: keras.Model, config: dict) -> None:
    """After ``compile``: tell the optimizer the head, build it on every variable, set epoch 0's phase.

    The optimizer is built while everything is trainable, so that unfreezing later needs no new
    optimizer (and checkpoints always hold the same optimizer variables).
    """
    if not fine_tuning(config):
        return
    optimizer = model.optimizer
    head = backbone_of(model).get_layer(HEAD_LAYER)
    optimizer.head_variables = [variable.path for variable in head.weights]
    set_phase(model, frozen=False)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    set_phase(model, frozen=config.get("freeze_epochs", 0) > 0)


class FineTuneSchedule(keras.callbacks.Callback):
    """Freezes the backbone for the first ``freeze_epochs`` epochs, then unfreezes it."""

    def __init__(self, freeze_epochs: int):
        super().__init__()
        self.freeze_epochs = freeze_epochs
        self.frozen: bool | None = None

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.freeze_epochs
        if frozen == self.frozen:
            return
        set_phase(self.model, frozen)
        self.model.make_train_function(force=True)  # re-trace: the trainable variables changed
        if self.frozen is not None or not frozen:
            print(f"\nepoch {epoch + 1}: backbone {'frozen' if frozen else 'unfrozen'}")
        self.frozen = frozen


def start_head(model: keras.Model, config: dict, class_ids) -> None:
    """``--head-from-weights``: the new classifier starts as the pretrained one restricted to the
    dataset's classes (class folders named by ImageNet WordNet ids, e.g. Imagenette's), so training
    starts from the pretrained model's own answers instead of a random head. EfficientNet-Lite only
    (its PyTorch weights carry their 1000-class head)."""
    if not config.get("head_from_weights"):
        return
    from training.architectures import model_info
    from training.architectures.torch_weights import FAMILY, imagenet_head
    from training.labels import imagenet_indices

    if model_info(config["arch"]).family != FAMILY:
        raise ValueError("--head-from-weights: EfficientNet-Lite only (its weights carry the ImageNet head)")
    kernel, bias = imagenet_head(config["arch"], config["weights"], imagenet_indices(class_ids))
    head = backbone_of(model).get_layer(HEAD_LAYER)
    head.kernel.assign(kernel)
    head.bias.assign(bias)


def callbacks(config: dict) -> list[keras.callbacks.Callback]:
    """The schedule's callback when fine-tuning (none otherwise)."""
    return [FineTuneSchedule(config.get("freeze_epochs", 0))] if fine_tuning(config) else []


def config_entries(args) -> dict:
    """The run-configuration entries of these flags (none without --weights: old runs unchanged)."""
    weights = getattr(args, "weights", None)
    freeze = getattr(args, "freeze_epochs", 0) or 0
    head = bool(getattr(args, "head_from_weights", False))
    if not weights:
        if freeze:
            raise ValueError("--freeze-epochs needs --weights (a frozen random backbone learns nothing)")
        if head:
            raise ValueError("--head-from-weights needs --weights")
        return {}
    if weights != "imagenet":
        from pathlib import Path

        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"--weights {weights}: no such file (use 'imagenet' or a weights file)")
        weights = str(path.resolve())
    return {
        "weights": weights,
        "freeze_epochs": int(freeze),
        "backbone_lr_scale": float(getattr(args, "backbone_lr_scale", BACKBONE_LR_SCALE)),
        **({"head_from_weights": True} if head else {}),  # absent unless set: older runs unchanged
    }
