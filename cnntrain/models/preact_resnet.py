"""Pre-activation ResNets: He, Zhang, Ren, Sun. "Identity Mappings in Deep Residual
Networks". ECCV 2016.

Each residual unit is BN-ReLU-conv (Fig. 4e, "full pre-activation"), the addition is not
followed by a ReLU, so the shortcut path is a pure identity from unit to unit; the
network ends with one more BN-ReLU before global average pooling and the classifier.

CIFAR networks:
- ``preact-resnet110``: 6n+2 layers of basic (3x3, 3x3) units, n = 18, 16/32/64 filters
  as in the original ResNet-110, with its parameter-free option-A shortcuts. 1.7M.
- ``preact-resnet164`` and ``preact-resnet1001``: 9n+2 layers of bottleneck units
  (1x1, 3x3, 1x1; 64/128/256 output channels, a quarter of that inside), n = 18 and 111,
  1x1 projection shortcuts where the shape changes. 1.7M and 10.2M.

The first unit takes its activation "right after conv1 and before splitting into two
paths" (§4 of the paper), so its shortcut carries BN-ReLU(conv1) too; as in the
authors' code (github.com/KaimingHe/resnet-1k-layers) so does every unit whose shape
changes, whose projection reads the pre-activated input. The bottleneck's stride sits
on its first 1x1 convolution; convolutions start from
N(0, 2/(k*k*out_channels)), BN from (1, 0) and the classifier's bias from 0.

``PreActBasicBlock`` (with its dropout between the two convolutions) is also Wide
ResNet's block; ``wide_resnet.py`` reuses ``PreActResNet``.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models.registry import register
from cnntrain.models.resnet import ShortcutA, conv1x1, conv3x3, he_init

PAPER = "He, Zhang, Ren, Sun. Identity Mappings in Deep Residual Networks. ECCV 2016"


def _shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module | None:
    """None for an identity; else option A (subsample + zero channels) or B (1x1 conv)."""
    if stride == 1 and cin == cout:
        return None
    if kind == "A":
        return ShortcutA(cin, cout, stride)
    if kind == "B":
        return conv1x1(cin, cout, stride)
    raise ValueError(f"shortcut must be 'A' or 'B', got {kind!r}")


def _identity(unit: nn.Module, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """The shortcut: x itself, except after the stem and where the shape changes."""
    if unit.shortcut is not None:
        return unit.shortcut(pre)
    return pre if unit.first else x


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut, no final ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "A",
                 dropout: float = 0.0, first: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = _identity(self, x, pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + identity


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1 (stride) - BN-ReLU-conv3x3 - BN-ReLU-conv1x1, width cout/4."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "B",
                 dropout: float = 0.0, first: bool = False) -> None:
        super().__init__()
        width = cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv1x1(cin, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn3 = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = conv1x1(width, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = _identity(self, x, pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.dropout(self.relu(self.bn3(out))))
        return out + identity


class PreActResNet(nn.Module):
    """conv3x3(stem) -> three stages of pre-activation units at 32, 16, 8 pixels ->
    BN-ReLU -> global average pool -> linear."""

    def __init__(self, block: type[PreActBasicBlock] | type[PreActBottleneck], units: int,
                 widths: tuple[int, int, int], num_classes: int = 10, in_channels: int = 3,
                 stem: int = 16, shortcut: str = "A", dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, stem)
        stages, cin = [], stem
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = [block(cin, width, stride, shortcut, dropout, first=not stages)]
            blocks += [block(width, width, 1, shortcut, dropout) for _ in range(units - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(cin)  # the extra activation after the last addition
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        he_init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def preact_resnet_cifar(depth: int, num_classes: int = 10, in_channels: int = 3,
                        bottleneck: bool | None = None) -> PreActResNet:
    """Depth 6n+2 with basic units (n per stage), or 9n+2 with bottleneck units; the
    paper's nets use basic units up to 110 layers and bottlenecks from 164 on."""
    if bottleneck is None:
        bottleneck = depth > 110
    per_unit = 9 if bottleneck else 6
    if (depth - 2) % per_unit:
        raise ValueError(f"pre-activation ResNet depth must be {per_unit}n+2, got {depth}")
    units = (depth - 2) // per_unit
    if bottleneck:
        return PreActResNet(PreActBottleneck, units, (64, 128, 256), num_classes, in_channels, shortcut="B")
    return PreActResNet(PreActBasicBlock, units, (16, 32, 64), num_classes, in_channels, shortcut="A")


def _register(depth: int) -> None:
    name = f"preact-resnet{depth}"

    @register(name, family="preact-resnet", paper=PAPER, input_size=32, year=2016)
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return preact_resnet_cifar(depth, num_classes, in_channels)

    build.__name__ = name


for _depth in (110, 164, 1001):
    _register(_depth)
