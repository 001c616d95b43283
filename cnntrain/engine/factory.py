"""The run factory: a recipe's training parts (model with its starting weights and
frozen parts, on its device and memory format,
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
from cnntrain.engine.freeze import apply_freeze
from cnntrain.engine.init_weights import init_from
from cnntrain.engine.losses import Teachers
from cnntrain.engine.mixing import BatchMix
from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.engine.optim import build_optimizer
from cnntrain.engine.step import FitStep, StepExtras
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe


AUTO_COMPILE_STEPS = 500  # train.compile = "auto": the shortest CUDA run that is compiled


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


def step_extras(recipe: Recipe, device: torch.device, classes: list[str] | int, mean: tuple[float, ...],
                std: tuple[float, ...], rank: int = 0) -> StepExtras:
    """The recipe's mixing, loss, distillation teachers and clipping."""
    num_classes = len(classes) if isinstance(classes, list) else classes
    mix = BatchMix(recipe.augment, num_classes, recipe.train.seed, rank)
    teachers = Teachers(recipe.train.distill, classes, mean, std, device) if recipe.train.distill else None
    return StepExtras(mix if mix.enabled else None, recipe.train.loss, teachers, recipe.train.clip_grad_norm)


def build_run(recipe: Recipe, device: torch.device, *, num_classes: int, channels: int,
              mean: tuple[float, ...], std: tuple[float, ...], env: distributed.DistEnv = distributed.SINGLE,
              strategy: str = "ddp", compile_model: bool = False, classes: list[str] | None = None) -> RunParts:
    """Every part of a training step for ``recipe`` on ``device``. The caller seeds the
    RNGs first (the model's initial weights come from them)."""
    precision = choose_precision(device, recipe.train.amp, recipe.train.channels_last)
    model = model_from_recipe(recipe, num_classes, channels)
    notes = [init_from(model, recipe.model.init, recipe.model.arch)] if recipe.model.init else []
    frozen = apply_freeze(model, recipe.train.freeze, num_classes)  # before wrapping: DDP skips frozen tensors
    notes += [frozen[1]] if frozen else []
    if env.is_main:
        for note in notes:
            print(note)
    model = model.to(device)
    if recipe.train.deterministic and device.type == "cuda":
        deterministic_pools(model)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.wrap_model(model, env, device, strategy, recipe.train.sync_bn, precision.amp_dtype)
    if frozen:
        frozen[0].hold_statistics(unwrap(model))  # SyncBatchNorm conversion made new layers
    optimizer = build_optimizer(model, recipe.optim)
    ema = make_average(unwrap(model), recipe.train.ema_decay)  # Polyak averaging
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler_needed)
    prep = batch_prep(recipe, device, mean, std)
    fit_step = FitStep(model, optimizer, scaler, prep, precision, device,
                       label_smoothing=recipe.train.label_smoothing, accumulate=recipe.train.accumulate,
                       aux_weight=recipe.train.aux_weight, env=env, ema=ema,
                       seed=recipe.train.seed,
                       extras=step_extras(recipe, device, classes or num_classes, mean, std, env.rank),
                       renorm_first_conv=recipe.train.renorm_first_conv)
    if compile_model:
        compile_step(fit_step)
    return RunParts(model, optimizer, scaler, precision, ema, prep, fit_step)


def wants_compile(mode: str, device: torch.device, total_steps: int, model: nn.Module | None = None) -> bool:
    """``train.compile``: on, off, or auto (on for CUDA runs of :data:`AUTO_COMPILE_STEPS`
    steps or more: compiling a ResNet-50 costs about a minute, which short runs never
    win back; on CPU the compiled kernels are not reliably faster). DataParallel
    re-replicates its module every step, which torch.compile does not follow: auto leaves
    such runs eager, and "on" asks for DDP instead."""
    data_parallel = isinstance(model, nn.DataParallel)
    if mode == "auto":
        return device.type == "cuda" and total_steps >= AUTO_COMPILE_STEPS and not data_parallel
    if mode == "on" and data_parallel:
        raise CnnTrainError('train.compile = "on" does not work with --strategy dp; use --nproc N (DDP), '
                            'or train.compile = "off"')
    return mode == "on"


def compile_step(fit_step: FitStep, rows: int | None = None) -> None:
    """Compile the step's model for batches of ``rows`` samples (None: whatever comes).

    The compiled module shares the model's parameters, and the model itself (DDP-wrapped
    where it is: torch compiles DDP per bucket) stays what checkpoints, EMA and
    evaluation see, so state dicts carry no ``_orig_mod.`` prefix. A batch of another
    size (an epoch's last, shorter one) runs the model eagerly instead of compiling a
    second graph or marking the batch dimension dynamic (slower kernels for every step).
    """
    fit_step.compiled = torch.compile(fit_step.model)
    fit_step.compiled_rows = rows
