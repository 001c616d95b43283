"""The model registry: every architecture registers a builder under its public name.

``build_model(name, num_classes=..., in_channels=..., **options)`` is the one way the
rest of cnntrain makes a network; models know nothing of data or training.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from cnntrain.errors import CnnTrainError, did_you_mean


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    paper: str
    input_size: int  # side of the square input its paper used
    year: int

    @property
    def default_classes(self) -> int:
        """The paper's class count when nothing else says: 10 for the 32-pixel (CIFAR)
        models, 1000 (ImageNet) for the others."""
        return 10 if self.input_size <= 32 else 1000


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, *, family: str, paper: str, input_size: int, year: int):
    """Decorator: register ``builder`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, family, paper, input_size, year)
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    check_model_name(name)
    return _REGISTRY[name]


def check_model_name(name: str, where: str = "model") -> None:
    if name not in _REGISTRY:
        raise CnnTrainError(
            f'{where}: unknown model "{name}"{did_you_mean(name, _REGISTRY)}; '
            "`cnntrain models` lists them"
        )


def builder_options(name: str) -> list[str]:
    """Keyword options a model's builder accepts besides num_classes and in_channels."""
    params = inspect.signature(model_info(name).builder).parameters
    return [p for p in params if p not in ("num_classes", "in_channels")]


def build_model(name: str, num_classes: int = 1000, in_channels: int | None = None, **options: Any) -> nn.Module:
    """Build the registered model ``name``; unknown options are a clear error.
    ``in_channels`` defaults to the model's own (1 for LeNet-5, 3 otherwise)."""
    info = model_info(name)
    valid = builder_options(name)
    for key in options:
        if key not in valid:
            raise CnnTrainError(
                f'model "{name}" has no option {key!r}{did_you_mean(key, valid)}; '
                f"its options: {', '.join(valid) or 'none'}"
            )
    if num_classes < 1:
        raise CnnTrainError(f"num_classes must be positive, got {num_classes}")
    if in_channels is not None:
        options["in_channels"] = in_channels
    return info.builder(num_classes=num_classes, **options)


def aux_head_params(model: nn.Module) -> int:
    """Parameters of the auxiliary classifiers (children named ``aux*``, as GoogLeNet's
    ``aux1``/``aux2`` and torchvision's): they run only in training, so inference counts
    (and the papers' figures) leave them out."""
    return sum(p.numel() for name, child in model.named_children() if name.startswith("aux") and child is not None
               for p in child.parameters())


def inference_params(model: nn.Module) -> int:
    """Parameters a prediction uses: all of them, less the auxiliary heads."""
    return sum(p.numel() for p in model.parameters()) - aux_head_params(model)
