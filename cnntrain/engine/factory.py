"""The run factory: a recipe's training parts (model on its device and memory format,
its parallel wrapper, optimiser, grad scaler, precision policy, weight average, batch
preparation and the fit step that joins them), built in one place.

``cnntrain fit`` (:class:`~cnntrain.engine.train.Trainer`) and ``cnntrain bench train``
both build their parts here, so the benchmark measures exactly the step that ``fit``
runs, not a copy of its set-up that could drift from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnntrain.data import BatchPrep
from cnntrain.engine import distributed
from cnntrain.engine.checkpoint import unwrap
from cnntrain.engine.device import Precision, choose_precision
from cnntrain.engine.ema import WeightAverage, make_average
from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.engine.optim import build_optimizer
from cnntrain.engine.step import FitStep
from cnntrain.recipe import Recipe


@dataclass
class RunParts:
    model: nn.Module  # as trained: wrapped for DDP/DataParallel where asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    ema: WeightAverage | None
    prep: BatchPrep
    fit_step: FitStep


class GlobalMeanPool(nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a mean over height and width: the same output, but a
    backward pass with a deterministic CUDA kernel (adaptive pooling's has none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


def deterministic_pools(model: nn.Module) -> nn.Module:
    """Swap every global ``AdaptiveAvgPool2d`` for :class:`GlobalMeanPool` (no parameters,
    so the state dict is unchanged), for ``train.deterministic`` on CUDA."""
    for name, module in list(model.named_modules()):
        size = getattr(module, "output_size", None)
        if isinstance(module, nn.AdaptiveAvgPool2d) and size in (1, (1, 1)):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], GlobalMeanPool())
    return model


def batch_prep(recipe: Recipe, device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> BatchPrep:
    """The training batch preparation: the recipe's memory format and PCA lighting."""
    precision = choose_precision(device, recipe.train.amp, recipe.train.channels_last)
    return BatchPrep(mean, std, device, precision.channels_last, recipe.augment.pca_lighting)


def build_run(recipe: Recipe, device: torch.device, *, num_classes: int, channels: int,
              mean: tuple[float, ...], std: tuple[float, ...], env: distributed.DistEnv = distributed.SINGLE,
              strategy: str = "ddp", compile_model: bool = False) -> RunParts:
    """Every part of a training step for ``recipe`` on ``device``. The caller seeds the
    RNGs first (the model's initial weights come from them)."""
    precision = choose_precision(device, recipe.train.amp, recipe.train.channels_last)
    model = model_from_recipe(recipe, num_classes, channels).to(device)
    if recipe.train.deterministic and device.type == "cuda":
        deterministic_pools(model)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.wrap_model(model, env, device, strategy, recipe.train.sync_bn, precision.amp_dtype)
    optimizer = build_optimizer(model, recipe.optim)
    ema = make_average(unwrap(model), recipe.train.ema_decay)  # Polyak averaging
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler_needed)
    prep = batch_prep(recipe, device, mean, std)
    step_model = torch.compile(model) if compile_model else model
    fit_step = FitStep(step_model, optimizer, scaler, prep, precision, device,
                       label_smoothing=recipe.train.label_smoothing, accumulate=recipe.train.accumulate,
                       aux_weight=recipe.train.aux_weight, env=env, ema=ema,
                       seed=recipe.train.seed, renorm_first_conv=recipe.train.renorm_first_conv)
    return RunParts(model, optimizer, scaler, precision, ema, prep, fit_step)
