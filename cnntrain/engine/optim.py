"""Optimisers and learning-rate schedules.

The schedule is computed, not accumulated: ``lr_at(step, epoch)`` gives the rate for
any point of training from the recipe alone, times a plateau factor that is the only
state (so resuming restores it exactly). Schedules count in epochs or iterations
(``schedule.unit``), so CIFAR recipes can say "divide by 10 at 32k and 48k iterations"
as He et al. did; ``plateau`` divides when validation top-1 stops improving, as
Krizhevsky et al. and He et al. did on ImageNet.

Weight decay comes in up to three groups: every parameter of a normalisation layer,
gamma and beta alike (``optim.norm_weight_decay``), the biases of all other layers
(``optim.bias_weight_decay``) and the rest (``optim.weight_decay``); Bag of Tricks
(He et al. 2019 §3.1, "no bias decay": biases and BN gamma and beta) sets the first two
to 0, torchvision's 2021 recipe (``--norm-weight-decay 0``) the first.
LARS and LAMB are in :mod:`~cnntrain.engine.large_batch`.

Fine-tuning (``optim.lr_mult``): parameters are grouped by the longest module-name
prefix that names them, and each group runs at the scheduled rate times its multiplier
(a new classifier at 10x the pretrained body's rate is the usual choice).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cnntrain.engine.checkpoint import unwrap
from cnntrain.engine.large_batch import LAMB, LARS
from cnntrain.errors import CnnTrainError, did_you_mean
from cnntrain.recipe import OptimSection, ScheduleSection

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)  # noqa: SLF001


def _prefix_of(name: str, prefixes: list[str]) -> str | None:
    """The longest prefix naming ``name`` at a module boundary (``fc`` names ``fc.weight``
    but not ``fc2.weight``)."""
    hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def _decay_kind(module: nn.Module, name: str) -> str:
    # Every parameter of a norm layer (gamma and beta) is "norm", as torchvision's
    # set_weight_decay files it and FFCV exempts every "bn" parameter: a recipe saying
    # norm_weight_decay = 0 must leave beta undecayed too. "bias" is other layers' biases.
    if isinstance(module, NORMS):
        return "norm"
    return "bias" if name == "bias" else "other"


def param_groups(model: nn.Module, weight_decay: float, norm_decay: float | None = None,
                 bias_decay: float | None = None, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """The trainable parameters in groups by (``lr_mult`` prefix, weight decay): each
    prefix's parameters at its multiplier, the rest at 1x; within each, norm-layer
    parameters, other biases and the rest when their decays differ (one group when they agree).
    A prefix naming no trainable parameter is an error: a typo would otherwise train the
    head at the body's rate unnoticed."""
    decays = {"norm": weight_decay if norm_decay is None else norm_decay,
              "bias": weight_decay if bias_decay is None else bias_decay, "other": weight_decay}
    split = len(set(decays.values())) > 1
    lr_mult = dict(lr_mult or {})
    named = [(f"{mod_name}.{n}" if mod_name else n, module, n, p)
             for mod_name, module in unwrap(model).named_modules()
             for n, p in module.named_parameters(recurse=False) if p.requires_grad]
    buckets: dict[tuple, list] = {}
    for full, module, name, param in named:
        kind = _decay_kind(module, name) if split else "other"
        buckets.setdefault((_prefix_of(full, list(lr_mult)), kind), []).append(param)
    empty = [k for k in lr_mult if not any(prefix == k for prefix, _ in buckets)]
    if empty:
        modules = sorted({full.split(".")[0] for full, *_ in named})
        raise CnnTrainError(f"optim.lr_mult: {empty[0]!r} names no trainable parameter"
                            f"{did_you_mean(empty[0], modules)}; top-level modules: {', '.join(modules)}")
    # the 1x groups last, as before lr_mult existed
    order = sorted(buckets, key=lambda key: key[0] is None)
    return [{"params": buckets[k], "weight_decay": decays[k[1]], "lr_mult": lr_mult.get(k[0], 1.0)} for k in order]


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.norm_weight_decay, cfg.bias_weight_decay, cfg.lr_mult)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.name == "lamb":
        return LAMB(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class LRSchedule:
    """Learning rate as a function of progress, with warm-up and plateau decay."""

    def __init__(self, cfg: ScheduleSection, base_lr: float, steps_per_epoch: int, total_steps: int) -> None:
        self.cfg, self.base_lr = cfg, base_lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.plateau_scale = 1.0
        self.best: float | None = None
        self.bad_evals = 0

    def _in_units(self, step: int) -> float:
        return step if self.cfg.unit == "iteration" else step / self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The rate for global optimisation step ``step`` (0-based)."""
        cfg = self.cfg
        t = self._in_units(step)
        # Epoch-based decays happen at epoch boundaries, as the papers' schedules did.
        whole = t if cfg.unit == "iteration" else math.floor(t)
        if cfg.name == "step":
            lr = self.base_lr * cfg.factor ** (whole // cfg.step_size)
        elif cfg.name == "multistep":
            lr = self.base_lr * cfg.factor ** sum(whole >= m for m in cfg.milestones)
        elif cfg.name == "cosine":
            progress = min(1.0, step / self.total_steps)
            lr = cfg.min_lr + (self.base_lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif cfg.name == "triangle":  # down from the warm-up's peak to min_lr at the last step
            peak = cfg.warmup if cfg.unit == "iteration" else cfg.warmup * self.steps_per_epoch
            progress = min(1.0, max(0.0, (step - peak) / max(1, self.total_steps - peak)))
            lr = cfg.min_lr + (self.base_lr - cfg.min_lr) * (1 - progress)
        elif cfg.name == "poly":
            progress = min(1.0, step / self.total_steps)
            lr = cfg.min_lr + (self.base_lr - cfg.min_lr) * (1 - progress) ** cfg.power
        else:  # constant, plateau
            lr = self.base_lr
        lr = max(lr * self.plateau_scale, cfg.min_lr) if cfg.name == "plateau" else lr
        if cfg.warmup > 0 and t < cfg.warmup:
            if cfg.warmup_mode == "constant":
                return self.base_lr * cfg.warmup_factor
            frac = t / cfg.warmup
            return lr * (cfg.warmup_factor + (1 - cfg.warmup_factor) * frac)
        return lr

    def observe(self, top1: float) -> bool:
        """Feed a validation top-1; returns True when a plateau cut the rate."""
        if self.cfg.name != "plateau":
            return False
        if self.best is None or top1 > self.best * (1 + self.cfg.threshold):
            self.best, self.bad_evals = top1, 0
            return False
        self.bad_evals += 1
        if self.bad_evals > self.cfg.patience:
            self.plateau_scale *= self.cfg.factor
            self.bad_evals = 0
            return True
        return False

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = state["best"]
        self.bad_evals = int(state["bad_evals"])
