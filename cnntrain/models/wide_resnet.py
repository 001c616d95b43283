"""Wide Residual Networks: Zagoruyko, Komodakis. "Wide Residual Networks". BMVC 2016.

``wrn-28-10`` (CIFAR): WRN-d-k has (d-4)/6 pre-activation basic units per stage (B(3,3)
in the paper's Table 1), a 16-filter 3x3 stem and stages of 16k, 32k and 64k filters on
32, 16 and 8 pixel maps, 1x1 projection shortcuts where the shape changes, BN-ReLU,
global average pooling, linear. d = 28, k = 10: 36.5M parameters. ``dropout`` (the
paper's best CIFAR results use 0.3) sits between the two convolutions of each unit
(§2.3 "dropout in residual blocks"). The unit is ``preact_resnet.PreActBasicBlock``:
as in the authors' code, a unit whose shape changes shares its BN-ReLU with the
projection. He et al. initialisation (N(0, 2/(k*k*out_channels))), as the paper's.

``wrn-50-2`` (ImageNet, §4 "ImageNet"): ResNet-50 with the bottleneck's inner width
doubled (the 1x1 expansion output is unchanged), i.e. torchvision's
``wide_resnet50_2``: same module names, so state dicts load either way; 68.9M.
The stride is on the 3x3 convolution, as in torchvision; ``stride_in_1x1=True`` moves it
to the first 1x1 (same state-dict layout).
"""
from __future__ import annotations

from torch import nn

from cnntrain.models.preact_resnet import PreActBasicBlock, PreActResNet
from cnntrain.models.registry import register
from cnntrain.models.resnet import Bottleneck, ResNet

PAPER = "Zagoruyko, Komodakis. Wide Residual Networks. BMVC 2016"


def wide_resnet_cifar(depth: int = 28, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
                      dropout: float = 0.0) -> PreActResNet:
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    units = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    return PreActResNet(PreActBasicBlock, units, widths, num_classes, in_channels, stem=16,
                        shortcut="B", dropout=dropout)


@register("wrn-28-10", family="wide-resnet", paper=PAPER, input_size=32, year=2016)
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet_cifar(28, 10, num_classes, in_channels, dropout)


@register("wrn-50-2", family="wide-resnet", paper=PAPER, input_size=224, year=2016)
def wrn_50_2(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False,
             stride_in_1x1: bool = False, dropout: float = 0.0) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, zero_init_residual,
                  stride_in_1x1, dropout, width_per_group=128)
