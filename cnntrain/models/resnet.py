"""ResNet: He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition". CVPR 2016.

ImageNet networks (Table 1): ResNet-18/34 of basic blocks, ResNet-50/101/152 of
bottleneck blocks, projection shortcuts (option B) where the shape changes. Module names
and shapes follow torchvision's, so state dicts load into ``torchvision.models.resnet*``
and back. The paper strides the bottleneck's first 1x1 convolution; torchvision (and
this default) strides the 3x3 ("ResNet v1.5"), which is about 0.5% more accurate at the
same parameter count. ``stride_in_1x1=True`` builds the paper's placement; both share
one state-dict layout.

CIFAR networks (§4.2): 6n+2 layers, a 3x3 conv of 16 filters, three stages of n basic
blocks with 16, 32 and 64 filters on 32, 16 and 8 pixel maps, global average pooling and
a linear classifier; identity shortcuts everywhere (option A: a stride-2 subsampling
with zero-padded extra channels), so shortcuts add no parameters. n = 3, 5, 7, 9, 18,
200 give ResNet-20, 32, 44, 56, 110, 1202 (0.27M ... 19.4M parameters).

Bag of Tricks (He, Zhang, Zhang, Zhang, Xie, Li. CVPR 2019, §4.1, Fig. 2): ResNet-B moves
the downsampling stride to the 3x3 (this module's default, torchvision's v1.5); ResNet-C
(``resnet50c``) replaces the 7x7 stem by three 3x3 convolutions of 32, 32 and 64 channels,
the first with stride 2; ResNet-D (``resnet50d``) is ResNet-C whose projection shortcuts
average-pool 2x2 with stride 2 before a stride-1 1x1 convolution, so no activation is
dropped. Table 5 gives all four 25M parameters; the layouts are timm's (``conv1.0``
... ``conv1.6``, ``downsample.1``/``downsample.2``), not torchvision's.
``zero_init_residual`` starts each block's last BN at gamma = 0 (Goyal et al. 2017, Bag of
Tricks §3.1 "zero gamma"); ``drop_path`` is the per-sample stochastic depth rate of the
last block, rising linearly from 0 over the blocks as timm's ``drop_path_rate``
("ResNet strikes back" trains with it).

The successors reuse these classes: ``Bottleneck``/``ResNet`` take torchvision's
``groups`` and ``width_per_group`` (ResNeXt, Wide ResNet-50-2) and ``ResNet`` and
``CifarResNet`` take a block class (SENet, stochastic depth).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.models.drops import DropPath
from cnntrain.models.registry import register

PAPER = "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016"
TRICKS = ("He, Zhang, Zhang, Zhang, Xie, Li. Bag of Tricks for Image Classification with Convolutional "
          "Neural Networks. CVPR 2019")


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, groups=groups,
                     dilation=dilation, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None,
                 stride_in_1x1: bool = False, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock has no groups or width_per_group; use Bottleneck")
        self.conv1 = conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.drop_path: nn.Module = nn.Identity()  # set by ResNet(drop_path=...); no parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand to ``planes * 4``. With ``groups`` and ``base_width``
    (torchvision's ``width_per_group``) the inner width is ``planes * base_width / 64 *
    groups`` and the 3x3 is a grouped convolution: ResNeXt's block (Xie et al. 2017,
    Fig. 3c) and Wide ResNet-50-2's (base_width 128) are this block."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 stride_in_1x1: bool = False, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(cin, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path: nn.Module = nn.Identity()  # set by ResNet(drop_path=...); no parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + identity)


def he_init(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He et al. 2015 initialisation for convolutions, BN as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:  # Goyal et al. 2017: each block starts as the identity
        for m in model.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (Bottleneck, BasicBlock)) and last is not None:
                nn.init.zeros_(last.weight)


def deep_stem_convs(in_channels: int) -> nn.Sequential:
    """ResNet-C's input stem: 3x3 convolutions of 32 (stride 2), 32 and 64 channels; the
    last one's BN and ReLU are the network's ``bn1`` and ``relu``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        conv3x3(32, 32), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        conv3x3(32, 64),
    )


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Per-sample drop-path on every residual block, rising linearly from 0 at the first
    block to ``rate`` at the last (timm's ``drop_path_rate``)."""
    if rate <= 0:
        return
    blocks = [m for m in model.modules() if isinstance(getattr(m, "drop_path", None), nn.Module)]
    for i, block in enumerate(blocks):
        block.drop_path = DropPath(rate * i / max(1, len(blocks) - 1))


class ResNet(nn.Module):
    """ImageNet ResNet (Table 1 of the paper), torchvision-compatible names.

    ``groups`` and ``width_per_group`` are torchvision's (ResNeXt, Wide ResNet-50-2);
    ``block_kwargs`` go to every block, for subclasses such as SENet's that take more.
    ``deep_stem`` and ``avg_down`` are Bag of Tricks' ResNet-C and -D tweaks; ``drop_path``
    the per-sample stochastic depth of the last block (see the module docstring)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False,
                 stride_in_1x1: bool = False, dropout: float = 0.0, groups: int = 1,
                 width_per_group: int = 64, block_kwargs: dict | None = None, *, deep_stem: bool = False,
                 avg_down: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.inplanes, self.avg_down = 64, avg_down
        self.block_kwargs = dict(stride_in_1x1=stride_in_1x1, groups=groups, base_width=width_per_group,
                                 **(block_kwargs or {}))
        self.conv1 = deep_stem_convs(in_channels) if deep_stem else nn.Conv2d(
            in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        he_init(self, zero_init_residual)
        set_drop_path(self, drop_path)

    def _make_layer(self, block, width: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            out = width * block.expansion
            if self.avg_down:  # ResNet-D: average-pool, then a stride-1 projection
                pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
                downsample = nn.Sequential(pool, conv1x1(self.inplanes, out), nn.BatchNorm2d(out))
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        layers = [block(self.inplanes, width, stride, downsample, **self.block_kwargs)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width, **self.block_kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


_IMAGENET = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def _register_imagenet(name: str, block, layers: list[int]) -> None:
    @register(name, family="resnet", paper=PAPER, input_size=224, year=2015)
    def build(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False,
              stride_in_1x1: bool = False, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
        return ResNet(block, layers, num_classes, in_channels, zero_init_residual, stride_in_1x1, dropout,
                      drop_path=drop_path)

    build.__name__ = name


for _name, (_block, _layers) in _IMAGENET.items():
    _register_imagenet(_name, _block, _layers)


# Bag of Tricks' tweaks (§4.1, Fig. 2): C = deep stem, D = deep stem + average-pool shortcut.
_TWEAKS = {"resnet50c": dict(deep_stem=True), "resnet50d": dict(deep_stem=True, avg_down=True)}


def _register_tweak(name: str, tweaks: dict) -> None:
    @register(name, family="resnet", paper=TRICKS, input_size=224, year=2019)
    def build(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False,
              dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
        return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, zero_init_residual, dropout=dropout,
                      drop_path=drop_path, **tweaks)

    build.__name__ = name


for _name, _tweaks in _TWEAKS.items():
    _register_tweak(_name, _tweaks)


# --------------------------------------------------------------------------- CIFAR (§4.2)


class ShortcutA(nn.Module):
    """Option A: identity with stride-2 subsampling and zero padding of the new channels."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class CifarBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = ShortcutA(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """6n+2-layer ResNet for 32x32 inputs (§4.2)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 block: type[CifarBasicBlock] = CifarBasicBlock) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [block(cin, width, stride)]
            blocks += [block(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register_cifar(depth: int) -> None:
    @register(f"resnet{depth}", family="resnet-cifar", paper=PAPER, input_size=32, year=2015)
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    build.__name__ = f"resnet{depth}"


for _depth in (20, 32, 44, 56, 110, 1202):
    _register_cifar(_depth)
