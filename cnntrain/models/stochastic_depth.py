"""Stochastic depth: Huang, Sun, Liu, Sedra, Weinberger. "Deep Networks with Stochastic
Depth". ECCV 2016.

During training each residual block l survives a mini-batch with probability p_l and is
otherwise skipped: H_l = ReLU(b_l * f_l(H_{l-1}) + id(H_{l-1})), b_l ~ Bernoulli(p_l),
one draw per block per mini-batch. p_l decays linearly with depth (Eq. 4),
p_l = 1 - l/L * (1 - p_L), from p_0 = 1 (the input) to ``p_last`` = p_L = 0.5 at the
last of the L blocks. At test time every block runs and its residual branch is scaled
by p_l (Eq. 5), the expected value it had in training; this is the paper's form, not
the "inverted" one that divides by p_l in training instead.

A skipped block costs nothing (its branch is not computed), so its parameters get no
gradient in that step: under DistributedDataParallel these models are wrapped with
``find_unused_parameters=True``. The draws come from :mod:`cnntrain.models.drops`, the
same on every process and a function of (seed, step). Under ``torch.compile`` a
Python-level skip would break the graph at every block, so there the decision is a 0/1
tensor drawn on the device and multiplied into the residual branch: every block runs
(no unused parameters), at the cost of the skipped blocks' compute and of their
BatchNorm statistics being updated in steps where the paper's block would not run.

- ``resnet110-stochastic-depth``: the CIFAR ResNet-110 of He et al. (option-A
  shortcuts, the architecture of the paper's §4 CIFAR experiments), 1.7M parameters.
- ``resnet152-stochastic-depth``: ImageNet ResNet-152 (§4 "ImageNet"), 60.2M; the blocks
  are ``resnet.Bottleneck``'s, so the state dict is torchvision's ``resnet152``'s
  (survival probabilities are rebuilt from ``p_last``, not stored).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.models import drops
from cnntrain.models.registry import register
from cnntrain.models.resnet import Bottleneck, CifarBasicBlock, CifarResNet, ResNet

PAPER = "Huang, Sun, Liu, Sedra, Weinberger. Deep Networks with Stochastic Depth. ECCV 2016"


def linear_decay(num_blocks: int, p_last: float) -> list[float]:
    """Survival probabilities p_1..p_L of Eq. 4."""
    return [1.0 - (l / num_blocks) * (1.0 - p_last) for l in range(1, num_blocks + 1)]


def _skip(survival: float) -> bool:
    """Bernoulli draw for one block and one mini-batch (eager mode)."""
    return survival < 1.0 and drops.uniform() >= survival


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _scale(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The residual branch as training or evaluation weighs it: by p_l at test time
    (Eq. 5); by a device-drawn 0/1 gate when compiled (see the module docstring)."""
    if not block.training:
        return out * block.survival
    if _compiling() and block.survival < 1.0:
        keep = (torch.rand((), device=out.device) < block.survival).to(out.dtype)
        return out * keep
    return out


class StochasticCifarBlock(drops.SkipsParameters, CifarBasicBlock):
    survival = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        if self.training and not _compiling() and _skip(self.survival):
            # ReLU(0 + id(x)) = id(x): x left a ReLU and option A only subsamples and pads.
            return identity
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(_scale(self, out) + identity)


class StochasticBottleneck(drops.SkipsParameters, Bottleneck):
    survival = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.training and not _compiling() and _skip(self.survival):
            return F.relu(identity)  # a projection shortcut can be negative
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(_scale(self, out) + identity)


def stochastic_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's stochastic blocks, input to output."""
    return [m for m in model.modules() if isinstance(m, (StochasticCifarBlock, StochasticBottleneck))]


def set_survival(model: nn.Module, p_last: float) -> nn.Module:
    """Give the model's blocks the linear-decay survival probabilities ending at p_last."""
    if not 0.0 < p_last <= 1.0:
        raise ValueError(f"p_last must be in (0, 1], got {p_last}")
    blocks = stochastic_blocks(model)
    for block, p in zip(blocks, linear_decay(len(blocks), p_last)):
        block.survival = p
    return model


@register("resnet110-stochastic-depth", family="stochastic-depth", paper=PAPER, input_size=32, year=2016)
def resnet110_stochastic_depth(num_classes: int = 10, in_channels: int = 3, p_last: float = 0.5) -> nn.Module:
    return set_survival(CifarResNet(110, num_classes, in_channels, block=StochasticCifarBlock), p_last)


@register("resnet152-stochastic-depth", family="stochastic-depth", paper=PAPER, input_size=224, year=2016)
def resnet152_stochastic_depth(num_classes: int = 1000, in_channels: int = 3, p_last: float = 0.5,
                               zero_init_residual: bool = False, stride_in_1x1: bool = False) -> nn.Module:
    model = ResNet(StochasticBottleneck, [3, 8, 36, 3], num_classes, in_channels, zero_init_residual,
                   stride_in_1x1)
    return set_survival(model, p_last)
