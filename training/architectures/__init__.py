"""The architecture zoo: landmark CNNs of 1998-2022, one module per family.

    from training.architectures import create_model, list_models
    model = create_model("resnet50", num_classes=10, input_shape=(128, 128, 3))

Importing this package imports every family module, so their ``@register_model`` entries and
their custom layers (needed to load ``.keras`` checkpoints) are registered, as are the custom
objects of fine-tuned checkpoints (``training.pretrained``, ``training.finetune``).
"""

from training.architectures._registry import (
    ModelInfo,
    _import_families,
    create_model,
    list_models,
    model_info,
)

_import_families()

# Custom objects of pretrained / fine-tuned checkpoints (caffe's channel flip, the two-rate optimizers).
import training.finetune  # noqa: E402,F401
import training.pretrained  # noqa: E402,F401

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
