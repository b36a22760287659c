"""The architecture zoo: landmark CNNs of 1998-2022, one module per family.

    from training.architectures import create_model, list_models
    model = create_model("resnet50", num_classes=10, input_shape=(128, 128, 3))
    model = create_model("resnet50", weights="imagenet")  # keras.applications' weights, transplanted

Importing this package imports every family module (the family list below), so their
``@register_model`` entries and their custom layers (needed to load ``.keras`` checkpoints) are
registered, as is the custom layer of pretrained weights' preprocessing (``weights``). The registry
(``_registry``) imports no family: families register themselves, this package imports them (timm's
pattern), so there is no import cycle. The zoo imports nothing of ``training`` outside this package.
"""

from training.architectures._factory import create_model
from training.architectures._registry import ModelInfo, list_models, model_info

# The family list: importing the family modules runs their @register_model decorators.
from training.architectures import (  # noqa: F401  isort: skip
    alexnet,
    convnext,
    densenet,
    efficientnet,
    efficientnet_lite,
    inception,
    lenet,
    mobilenet,
    resnet,
    vgg,
    xception,
)

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
