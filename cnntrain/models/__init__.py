"""Architectures, one file per paper family, all reached through the registry."""
from cnntrain.models import alexnet, googlenet, inception, lenet, nin, resnet, squeezenet, vgg, zfnet  # noqa: F401  (registers the models)
from cnntrain.models.registry import (
    ModelInfo,
    build_model,
    builder_options,
    check_model_name,
    list_models,
    model_info,
    register,
)

__all__ = [
    "ModelInfo",
    "build_model",
    "builder_options",
    "check_model_name",
    "list_models",
    "model_info",
    "register",
]
