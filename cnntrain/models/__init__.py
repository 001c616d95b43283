"""Architectures, one file per paper family, all reached through the registry."""
from cnntrain.models import (  # noqa: F401  (importing registers the models)
    alexnet,
    densenet,
    fractalnet,
    googlenet,
    inception,
    lenet,
    nin,
    preact_resnet,
    resnet,
    resnext,
    senet,
    squeezenet,
    stochastic_depth,
    vgg,
    wide_resnet,
    zfnet,
)
from cnntrain.models.registry import (
    ModelInfo,
    aux_head_params,
    build_model,
    builder_options,
    check_model_name,
    inference_params,
    list_models,
    model_info,
    register,
)

__all__ = [
    "ModelInfo",
    "aux_head_params",
    "build_model",
    "builder_options",
    "check_model_name",
    "inference_params",
    "list_models",
    "model_info",
    "register",
]
