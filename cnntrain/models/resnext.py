"""ResNeXt: Xie, Girshick, Dollar, Tu, He. "Aggregated Residual Transformations for Deep
Neural Networks". CVPR 2017.

The block aggregates C paths of width d; in its grouped-convolution form (Fig. 3c) it is
ResNet's bottleneck with an inner width of C*d (doubling per stage) and a 3x3 convolution
in C groups, so ``resnet.Bottleneck`` with ``groups``/``width_per_group`` builds it.

ImageNet (Table 1, strides on the 3x3 as the paper's fb.resnet.torch code does):
``resnext50-32x4d`` (25.0M) and ``resnext101-32x8d`` (88.8M), with torchvision's module
names: state dicts load into ``torchvision.models.resnext50_32x4d`` /
``resnext101_32x8d`` and back.

CIFAR (§5.3): ``resnext29-8x64d``: a 64-filter 3x3 stem, three stages of three bottleneck
blocks with 256, 512 and 1024 output channels on 32, 16 and 8 pixel maps, cardinality 8
and path width 64 in the first stage (inner width 512, doubling per stage), projection
shortcuts where the shape changes, global average pooling, linear: 34.4M.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models.registry import register
from cnntrain.models.resnet import Bottleneck, ResNet, conv1x1, conv3x3, he_init

PAPER = "Xie, Girshick, Dollar, Tu, He. Aggregated Residual Transformations for Deep Neural Networks. CVPR 2017"


def _register_imagenet(name: str, layers: list[int], cardinality: int, path_width: int) -> None:
    @register(name, family="resnext", paper=PAPER, input_size=224, year=2017)
    def build(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False,
              stride_in_1x1: bool = False, dropout: float = 0.0) -> nn.Module:
        return ResNet(Bottleneck, layers, num_classes, in_channels, zero_init_residual, stride_in_1x1,
                      dropout, groups=cardinality, width_per_group=path_width)

    build.__name__ = name


_register_imagenet("resnext50-32x4d", [3, 4, 6, 3], 32, 4)
_register_imagenet("resnext101-32x8d", [3, 4, 23, 3], 32, 8)


class CifarResNeXt(nn.Module):
    """ResNeXt-(9n+2) for 32x32 inputs, n blocks per stage."""

    def __init__(self, depth: int = 29, cardinality: int = 8, path_width: int = 64,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"CIFAR ResNeXt depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2)):
            cout = planes * Bottleneck.expansion
            down = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            blocks = [Bottleneck(cin, planes, stride, down, groups=cardinality, base_width=path_width)]
            blocks += [Bottleneck(cout, planes, groups=cardinality, base_width=path_width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        he_init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("resnext29-8x64d", family="resnext-cifar", paper=PAPER, input_size=32, year=2017)
def resnext29_8x64d(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNeXt(29, 8, 64, num_classes, in_channels)
