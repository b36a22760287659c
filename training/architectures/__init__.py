"""The architecture zoo: landmark CNNs of 1998-2022, one module per family.

    from training.architectures import create_model, list_models
    model = create_model("resnet50", num_classes=10, input_shape=(128, 128, 3))
"""

from training.architectures._registry import ModelInfo, create_model, list_models, model_info

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
