"""Optimisers and learning-rate schedules.

The schedule is computed, not accumulated: ``lr_at(step, epoch)`` gives the rate for
any point of training from the recipe alone, times a plateau factor that is the only
state (so resuming restores it exactly). Schedules count in epochs or iterations
(``schedule.unit``), so CIFAR recipes can say "divide by 10 at 32k and 48k iterations"
as He et al. did; ``plateau`` divides when validation top-1 stops improving, as
Krizhevsky et al. and He et al. did on ImageNet.

Fine-tuning (``optim.lr_mult``): parameters are grouped by the longest module-name
prefix that names them, and each group runs at the scheduled rate times its multiplier
(a new classifier at 10x the pretrained body's rate is the usual choice).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cnntrain.engine.checkpoint import unwrap
from cnntrain.errors import CnnTrainError, did_you_mean
from cnntrain.recipe import OptimSection, ScheduleSection


def _prefix_of(name: str, prefixes: list[str]) -> str | None:
    """The longest prefix naming ``name`` at a module boundary (``fc`` names ``fc.weight``
    but not ``fc2.weight``)."""
    hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def param_groups(model: nn.Module, weight_decay: float, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """The trainable parameters, one group per ``lr_mult`` prefix that names some (each
    with its ``lr_mult``), then the rest at 1x. A prefix naming no trainable parameter
    is an error: a typo would otherwise train the head at the body's rate unnoticed."""
    lr_mult = dict(lr_mult or {})
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    buckets: dict[str | None, list] = {None: [], **{k: [] for k in lr_mult}}
    for name, param in named:
        buckets[_prefix_of(name, list(lr_mult))].append(param)
    empty = [k for k in lr_mult if not buckets[k]]
    if empty:
        modules = sorted({n.split(".")[0] for n, _ in named})
        raise CnnTrainError(f"optim.lr_mult: {empty[0]!r} names no trainable parameter"
                            f"{did_you_mean(empty[0], modules)}; top-level modules: {', '.join(modules)}")
    groups = [{"params": ps, "weight_decay": weight_decay, "lr_mult": lr_mult[k]} for k, ps in buckets.items()
              if k is not None]
    if buckets[None]:
        groups.append({"params": buckets[None], "weight_decay": weight_decay, "lr_mult": 1.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr_mult)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


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
