"""Polyak averaging of the weights (``train.ema_decay``), used for evaluation and best.pt.

Szegedy et al. 2015 (GoogLeNet, §6) evaluate "Polyak averaging" of the parameters; as in
their TensorFlow successors this is an exponential moving average: after every
optimisation step, for each floating-point parameter and buffer,

    avg <- decay * avg + (1 - decay) * current

(integer buffers such as BN's ``num_batches_tracked`` are copied). The averaged copy
lives on the same device, is never trained, and is saved and restored in the checkpoint.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of a model's state."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for key, avg in self.module.state_dict().items():
            value = current[key].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(self.decay).add_(value.to(avg.dtype), alpha=1 - self.decay)
            else:
                avg.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def make_average(model: nn.Module, decay: float) -> WeightAverage | None:
    """The averaged copy for ``train.ema_decay``, or None when averaging is off (0)."""
    return WeightAverage(model, decay) if decay > 0 else None
