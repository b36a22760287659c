"""The architecture zoo: landmark CNNs of 1998-2022, one module per family.

    from training.architectures import create_model, list_models
    model = create_model("resnet50", num_classes=10, input_shape=(128, 128, 3))

Importing this package imports every family module, so their ``@register_model`` entries and
their custom layers (needed to load ``.keras`` checkpoints) are registered, as are the custom
objects of fine-tuned checkpoints (``training.pretrained``, ``training.finetune``). The registry
(``_registry``) imports no family: families register themselves, this package imports them
(timm's pattern), so there is no import cycle.
"""

from training.architectures._registry import ModelInfo, create_model, list_models, model_info

# Importing the family modules runs their @register_model decorators.
from training.architectures import (  # noqa: F401  isort: skip
    alexnet,
    convnext,
    densenet,
    efficientnet,
    inception,
    lenet,
    mobilenet,
    resnet,
    vgg,
    xception,
)

# Custom objects of pretrained / fine-tuned checkpoints (caffe's channel flip, the two-rate optimizers).
import training.finetune
import training.pretrained
from training.architectures._registry import set_weights_loader

set_weights_loader(training.pretrained.load_pretrained)  # create_model(weights=...)

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
