"""Architectures, one file per paper family, all reached through the registry."""
from cnntrain.models import (  # noqa: F401  (registers the models)
    alexnet,
    densenet,
    fractalnet,
    lenet,
    preact_resnet,
    resnet,
    resnext,
    senet,
    stochastic_depth,
    wide_resnet,
)
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
