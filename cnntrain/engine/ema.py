"""Polyak averaging of the weights (``train.ema_decay``), used for evaluation and best.pt.

Szegedy et al. 2015 (GoogLeNet, §6) evaluate "Polyak averaging" of the parameters; as in
their TensorFlow successors this is an exponential moving average: after every
optimisation step, for each floating-point parameter and buffer,

    avg <- decay * avg + (1 - decay) * current

(integer buffers such as BN's ``num_batches_tracked`` are copied), computed as
``lerp(avg, current, 1 - decay)``, equal to the form above within float rounding. The averaged copy
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
        self._cached: tuple[nn.Module, tuple[list, list, list, list]] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step: a single fused multi-tensor lerp over every floating-point
        tensor (two small kernels per tensor were ~640 launches per ResNet-50 step), and a
        fused copy of the integer buffers. The tensor lists are built once per model."""
        floats_avg, floats_cur, ints_avg, ints_cur = self._lists(model)
        if floats_avg:
            torch._foreach_lerp_(floats_avg, floats_cur, 1 - self.decay)
        for avg, value in zip(ints_avg, ints_cur):
            avg.copy_(value)
        self.updates += 1

    def _lists(self, model: nn.Module) -> tuple[list, list, list, list]:
        if self._cached is None or self._cached[0] is not model:
            current = model.state_dict()
            lists: tuple[list, list, list, list] = ([], [], [], [])
            for key, avg in self.module.state_dict().items():
                value = current[key].detach()
                floating = avg.dtype.is_floating_point  # a deep copy: same dtypes as the model
                lists[0 if floating else 2].append(avg)
                lists[1 if floating else 3].append(value)
            self._cached = (model, lists)
        return self._cached[1]

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def make_average(model: nn.Module, decay: float) -> WeightAverage | None:
    """The averaged copy for ``train.ema_decay``, or None when averaging is off (0)."""
    return WeightAverage(model, decay) if decay > 0 else None
