"""ZFNet's filter renormalisation (Zeiler & Fergus 2014 Sect. 3, "Training Details"):
"we renormalize each filter in the convolutional layers whose RMS value exceeds a fixed
radius of 10^-1 to this fixed radius. This is crucial, especially in the first layer of
the model" -- a few first-layer filters otherwise come to dominate (their Fig. 6(a)).

``train.renorm_first_conv = R`` applies it to the first convolution after every
optimiser step: a filter (one output channel) whose root-mean-square weight exceeds R is
scaled down to RMS R; the others are left alone. Bias is not part of the filter.

The paper's inputs were raw pixels minus the mean, "roughly in the [-128, 128] range";
cnntrain normalises inputs to unit standard deviation, so the same radius bounds the
first layer's responses more tightly than it did in the paper.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.errors import CnnTrainError


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution registered in ``model`` (the one that sees the image)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise CnnTrainError(f"train.renorm_first_conv: {type(model).__name__} has no convolution to renormalise")


def filter_rms(conv: nn.Conv2d) -> torch.Tensor:
    """Root-mean-square weight of each filter (output channel)."""
    return conv.weight.detach().float().pow(2).flatten(1).mean(1).sqrt()


class FilterRenorm:
    """Callable: cap the RMS of each first-layer filter at ``radius`` (in place, on the
    device, no host read)."""

    def __init__(self, model: nn.Module, radius: float) -> None:
        self.conv, self.radius = first_conv(model), float(radius)

    @torch.no_grad()
    def __call__(self) -> None:
        weight = self.conv.weight
        scale = (self.radius / filter_rms(self.conv).clamp_min(1e-12)).clamp(max=1.0)
        weight.mul_(scale.to(weight.dtype).view(-1, *([1] * (weight.ndim - 1))))
