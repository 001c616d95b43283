"""Squeeze-and-Excitation networks: Hu, Shen, Sun. "Squeeze-and-Excitation Networks".
CVPR 2018.

An SE module (Fig. 1, Fig. 3) recalibrates the channels of a block's residual branch
before the addition: global average pooling ("squeeze"), FC to C/r, ReLU, FC back to C,
sigmoid, and a channel-wise product ("excitation"), with the paper's reduction r = 16. The
FC layers are 1x1 in effect and have biases, as in the released models.

- ``se-resnet50``: ResNet-50 with an SE module in every bottleneck, 28.1M parameters.
- ``se-resnext50-32x4d``: ResNeXt-50 (32x4d) likewise, 27.6M.

Both reuse ``resnet.ResNet`` (torchvision names plus ``layerN.M.se.fc1/fc2``). The
stride sits on the 3x3 convolution as in this package's ResNet-50 ("v1.5"); the paper's
SE-ResNet-50 follows the original ResNet-50 and strides the first 1x1 convolution,
which ``stride_in_1x1=True`` builds (same parameters, same state-dict layout).
Convolutions use He et al. initialisation; the SE layers PyTorch's default.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models.registry import register
from cnntrain.models.resnet import Bottleneck, ResNet

PAPER = "Hu, Shen, Sun. Squeeze-and-Excitation Networks. CVPR 2018"


class SqueezeExcitation(nn.Module):
    # A gate: its FCs rescale the block's channels, they are not layers of the network's
    # depth nor classifier FC layers (the paper's SE-ResNet-50 is 50 layers, one FC).
    gating = True

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class SEBottleneck(Bottleneck):
    """ResNet/ResNeXt bottleneck with SE on the residual branch, before the addition."""

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 stride_in_1x1: bool = False, groups: int = 1, base_width: int = 64,
                 reduction: int = 16) -> None:
        super().__init__(cin, planes, stride, downsample, stride_in_1x1, groups, base_width)
        self.se = SqueezeExcitation(planes * self.expansion, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


def _register(name: str, groups: int, width_per_group: int) -> None:
    @register(name, family="senet", paper=PAPER, input_size=224, year=2018)
    def build(num_classes: int = 1000, in_channels: int = 3, reduction: int = 16,
              zero_init_residual: bool = False, stride_in_1x1: bool = False, dropout: float = 0.0) -> nn.Module:
        return ResNet(SEBottleneck, [3, 4, 6, 3], num_classes, in_channels, zero_init_residual, stride_in_1x1,
                      dropout, groups=groups, width_per_group=width_per_group,
                      block_kwargs={"reduction": reduction})

    build.__name__ = name


_register("se-resnet50", 1, 64)
_register("se-resnext50-32x4d", 32, 4)
