"""DenseNet: Huang, Liu, van der Maaten, Weinberger. "Densely Connected Convolutional
Networks". CVPR 2017.

Inside a dense block every layer sees the concatenation of all earlier feature maps and
adds k (the growth rate) new ones. The "BC" layer is BN-ReLU-conv1x1 (4k channels)
followed by BN-ReLU-conv3x3 (k channels); transitions between blocks are
BN-ReLU-conv1x1-avgpool2x2 and keep a fraction theta = 0.5 of the channels. After the
last block: BN-ReLU, global average pooling, linear.

ImageNet (Table 1): a 7x7/2 convolution of 2k channels and a 3x3/2 max-pool, then four
blocks: ``densenet121`` (6, 12, 24, 16), ``densenet169`` (6, 12, 32, 32),
``densenet201`` (6, 12, 48, 32) with k = 32, and ``densenet161`` (6, 12, 36, 24) with
k = 48; 7.98M, 14.15M, 20.01M and 28.68M parameters. Module names are those of the
current ``torchvision.models.densenet*`` (``features.denseblock1.denselayer1.norm1``),
so state dicts load either way; old checkpoints with dotted names (``norm.1``,
``conv.2``) are renamed on load.

CIFAR (§3 "Implementation Details"): ``densenet-bc-100`` (L = 100, k = 12): a 3x3
convolution of 2k channels, three blocks of (L-4)/6 = 16 BC layers on 32, 16 and 8 pixel
maps; 0.77M parameters for 10 classes, 0.80M for 100 (the paper's "0.8M").

``dropout`` (0.2 in the paper's runs without data augmentation) follows each 3x3
convolution. ``memory_efficient`` recomputes each layer's concatenation and bottleneck
in the backward pass instead of storing them (Pleiss et al. 2017): same results, much
less memory, somewhat slower. Convolutions start from N(0, 2/(k*k*out_channels)), as in
the authors' Torch code, BN from (1, 0), the classifier's bias from 0.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from cnntrain.models.registry import register

PAPER = "Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks. CVPR 2017"

_LEGACY_KEY = re.compile(r"^(norm|relu|conv)\.([12])\.(.+)$")


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4, dropout: float = 0.0,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)
        self.dropout = float(dropout)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and any(f.requires_grad for f in features):
            out = cp.checkpoint(self._bottleneck, *features, use_reentrant=False)
        else:
            out = self._bottleneck(*features)
        out = self.conv2(self.relu2(self.norm2(out)))
        return F.dropout(out, self.dropout, self.training) if self.dropout > 0 else out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # torchvision's pre-0.3 checkpoints name this layer's modules "norm.1", "conv.2", ...
        for key in [k for k in state_dict if k.startswith(prefix)]:
            legacy = _LEGACY_KEY.match(key[len(prefix):])
            if legacy:
                state_dict[prefix + legacy[1] + legacy[2] + "." + legacy[3]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int, dropout: float,
                 memory_efficient: bool) -> None:
        super().__init__()
        for i in range(layers):
            self[f"denselayer{i + 1}"] = DenseLayer(cin + i * growth, growth, bn_size, dropout, memory_efficient)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth: int, blocks: tuple[int, ...], num_classes: int = 1000, in_channels: int = 3,
                 cifar: bool = False, compression: float = 0.5, bn_size: int = 4, dropout: float = 0.0,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        channels = 2 * growth
        if cifar:  # 32x32 inputs: one 3x3 convolution, no downsampling before the first block
            stem = [("conv0", nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False))]
        else:
            stem = [("conv0", nn.Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(channels)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        self.features = nn.Sequential(OrderedDict(stem))
        for i, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}",
                                     DenseBlock(layers, channels, growth, bn_size, dropout, memory_efficient))
            channels += layers * growth
            if i != len(blocks) - 1:
                out = int(compression * channels)
                self.features.add_module(f"transition{i + 1}", Transition(channels, out))
                channels = out
        self.features.add_module("norm5", nn.BatchNorm2d(channels))  # torchvision's name, any block count
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


_IMAGENET = {
    "densenet121": (32, (6, 12, 24, 16)),
    "densenet169": (32, (6, 12, 32, 32)),
    "densenet201": (32, (6, 12, 48, 32)),
    "densenet161": (48, (6, 12, 36, 24)),
}


def _register_imagenet(name: str, growth: int, blocks: tuple[int, ...]) -> None:
    @register(name, family="densenet", paper=PAPER, input_size=224, year=2017)
    def build(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0,
              memory_efficient: bool = False) -> nn.Module:
        return DenseNet(growth, blocks, num_classes, in_channels, dropout=dropout,
                        memory_efficient=memory_efficient)

    build.__name__ = name


for _name, (_growth, _blocks) in _IMAGENET.items():
    _register_imagenet(_name, _growth, _blocks)


@register("densenet-bc-100", family="densenet-cifar", paper=PAPER, input_size=32, year=2017)
def densenet_bc_100(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
                    memory_efficient: bool = False) -> nn.Module:
    depth, growth = 100, 12
    per_block = (depth - 4) // 6  # each BC layer is two convolutions
    return DenseNet(growth, (per_block,) * 3, num_classes, in_channels, cifar=True, dropout=dropout,
                    memory_efficient=memory_efficient)
