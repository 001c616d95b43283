"""Inception-v4 and Inception-ResNet-v2: Szegedy, Ioffe, Vanhoucke, Alemi.
"Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning".
AAAI 2017.

299x299 inputs; every convolution is conv (no bias) -> batch norm (eps 1e-3) -> ReLU, as
in the authors' TF-slim release. "V" convolutions and pools are unpadded, the rest keep
the size. Global average pooling, dropout 0.2 ("keep 0.8"), one linear layer.

``inception-v4`` (Fig. 9, 42.7M parameters): the stem of Fig. 3 (299 -> 35x35x384),
4 x Inception-A (Fig. 4), Reduction-A (Fig. 7, k=192 l=224 m=256 n=384; 17x17x1024),
7 x Inception-B (Fig. 5), Reduction-B (Fig. 8; 8x8x1536), 3 x Inception-C (Fig. 6).

``inception-resnet-v2`` (55.8M parameters) is the network the authors released with the
paper (TF-slim ``inception_resnet_v2``, the one behind its reported results); the
paper's figures for it are not self-consistent (Fig. 17 adds a 1154-wide projection to a
1152-wide input, Fig. 19's 2048 outputs do not match Reduction-B's 2146, Fig. 15 counts
5/10/5 blocks), so the released layout is used: a stem of conv 3x3/2 32 -> 3x3 32 -> 3x3
64 -> max 3x3/2 -> 1x1 80 -> 3x3 192 -> max 3x3/2 and a mixed 35x35x320 block,
10 x Inception-ResNet-A (Fig. 16, residual scale 0.17), Reduction-A (k=256 l=256 m=384
n=384; 17x17x1088), 20 x Inception-ResNet-B (Fig. 17, scale 0.10), Reduction-B
(Fig. 18; 8x8x2080), 10 x Inception-ResNet-C (Fig. 19, scale 0.20, no ReLU after the
last), and a 1x1 conv to 1536. Each residual branch ends in a linear 1x1 convolution
(with bias, no BN) back to the block's width, scaled before the addition (§3.3).

The paper gives no initialisation; as in TF-slim, convolutions are He (fan-in) normal,
the classifier Glorot uniform, BN the identity. The unpadded stem and reductions need
inputs of at least 75x75 (smaller ones raise a clear error rather than fail inside).
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.errors import CnnTrainError
from cnntrain.models.googlenet import BasicConv2d
from cnntrain.models.registry import register

PAPER = ("Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the Impact of "
         "Residual Connections on Learning. AAAI 2017")
MIN_SIZE = 75


def conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
         padding: int | tuple[int, int] = 0) -> BasicConv2d:
    return BasicConv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding)


def conv1x7(cin: int, cout: int) -> BasicConv2d:
    return conv(cin, cout, (1, 7), padding=(0, 3))


def conv7x1(cin: int, cout: int) -> BasicConv2d:
    return conv(cin, cout, (7, 1), padding=(3, 0))


def avg_pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class Branches(nn.Module):
    """Parallel branches whose outputs are concatenated along channels (in TF-slim's order)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


class Split(nn.Module):
    """Inception-C's fork: one input into a 1x3 and a 3x1 convolution, concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1x3 = conv(cin, cout, (1, 3), padding=(0, 1))
        self.conv3x1 = conv(cin, cout, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv1x3(x), self.conv3x1(x)], 1)


# ---------------------------------------------------------------------------- Inception-v4


def stem_v4(cin: int) -> nn.Sequential:
    """Fig. 3: 299x299x3 -> 35x35x384."""
    return nn.Sequential(
        conv(cin, 32, 3, stride=2), conv(32, 32, 3), conv(32, 64, 3, padding=1),  # 147x147x64
        Branches(nn.MaxPool2d(3, stride=2), conv(64, 96, 3, stride=2)),  # 73x73x160
        Branches(nn.Sequential(conv(160, 64, 1), conv(64, 96, 3)),
                 nn.Sequential(conv(160, 64, 1), conv7x1(64, 64), conv1x7(64, 64), conv(64, 96, 3))),  # 71x71x192
        Branches(conv(192, 192, 3, stride=2), nn.MaxPool2d(3, stride=2)),  # 35x35x384
    )


def inception_a() -> Branches:  # Fig. 4, 35x35x384
    return Branches(
        conv(384, 96, 1),
        nn.Sequential(conv(384, 64, 1), conv(64, 96, 3, padding=1)),
        nn.Sequential(conv(384, 64, 1), conv(64, 96, 3, padding=1), conv(96, 96, 3, padding=1)),
        nn.Sequential(avg_pool(), conv(384, 96, 1)),
    )


def reduction_a(cin: int, k: int, l: int, m: int, n: int) -> Branches:  # noqa: E741  (Fig. 7)
    return Branches(
        conv(cin, n, 3, stride=2),
        nn.Sequential(conv(cin, k, 1), conv(k, l, 3, padding=1), conv(l, m, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def inception_b() -> Branches:  # Fig. 5, 17x17x1024
    return Branches(
        conv(1024, 384, 1),
        nn.Sequential(conv(1024, 192, 1), conv1x7(192, 224), conv7x1(224, 256)),
        nn.Sequential(conv(1024, 192, 1), conv7x1(192, 192), conv1x7(192, 224),
                      conv7x1(224, 224), conv1x7(224, 256)),
        nn.Sequential(avg_pool(), conv(1024, 128, 1)),
    )


def reduction_b() -> Branches:  # Fig. 8, 17x17x1024 -> 8x8x1536
    return Branches(
        nn.Sequential(conv(1024, 192, 1), conv(192, 192, 3, stride=2)),
        nn.Sequential(conv(1024, 256, 1), conv1x7(256, 256), conv7x1(256, 320), conv(320, 320, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def inception_c() -> Branches:  # Fig. 6, 8x8x1536
    return Branches(
        conv(1536, 256, 1),
        nn.Sequential(conv(1536, 384, 1), Split(384, 256)),
        nn.Sequential(conv(1536, 384, 1), conv(384, 448, (3, 1), padding=(1, 0)),
                      conv(448, 512, (1, 3), padding=(0, 1)), Split(512, 256)),
        nn.Sequential(avg_pool(), conv(1536, 256, 1)),
    )


# --------------------------------------------------------------------- Inception-ResNet-v2


class Residual(nn.Module):
    """x + scale * project(branches(x)), then ReLU (§3.3: the scaled residual keeps very
    wide networks stable); ``project`` is a linear 1x1 conv back to the input width."""

    def __init__(self, branches: Branches, branch_width: int, width: int, scale: float,
                 relu: bool = True) -> None:
        super().__init__()
        self.branches = branches
        self.project = nn.Conv2d(branch_width, width, 1)
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.scale * self.project(self.branches(x)))


def block_a(scale: float = 0.17) -> Residual:  # Fig. 16, 35x35x320
    return Residual(Branches(
        conv(320, 32, 1),
        nn.Sequential(conv(320, 32, 1), conv(32, 32, 3, padding=1)),
        nn.Sequential(conv(320, 32, 1), conv(32, 48, 3, padding=1), conv(48, 64, 3, padding=1)),
    ), 128, 320, scale)


def block_b(scale: float = 0.10) -> Residual:  # Fig. 17, 17x17x1088
    return Residual(Branches(
        conv(1088, 192, 1),
        nn.Sequential(conv(1088, 128, 1), conv1x7(128, 160), conv7x1(160, 192)),
    ), 384, 1088, scale)


def block_c(scale: float = 0.20, relu: bool = True) -> Residual:  # Fig. 19, 8x8x2080
    return Residual(Branches(
        conv(2080, 192, 1),
        nn.Sequential(conv(2080, 192, 1), conv(192, 224, (1, 3), padding=(0, 1)),
                      conv(224, 256, (3, 1), padding=(1, 0))),
    ), 448, 2080, scale, relu)


def stem_resnet_v2(cin: int) -> nn.Sequential:
    """The released stem: 299x299x3 -> 35x35x320."""
    return nn.Sequential(
        conv(cin, 32, 3, stride=2), conv(32, 32, 3), conv(32, 64, 3, padding=1),  # 147x147x64
        nn.MaxPool2d(3, stride=2), conv(64, 80, 1), conv(80, 192, 3),  # 71x71x192
        nn.MaxPool2d(3, stride=2),  # 35x35x192
        Branches(
            conv(192, 96, 1),
            nn.Sequential(conv(192, 48, 1), conv(48, 64, 5, padding=2)),
            nn.Sequential(conv(192, 64, 1), conv(64, 96, 3, padding=1), conv(96, 96, 3, padding=1)),
            nn.Sequential(avg_pool(), conv(192, 64, 1)),
        ),  # 35x35x320
    )


def reduction_b_resnet_v2() -> Branches:  # Fig. 18, 17x17x1088 -> 8x8x2080
    return Branches(
        nn.Sequential(conv(1088, 256, 1), conv(256, 384, 3, stride=2)),
        nn.Sequential(conv(1088, 256, 1), conv(256, 288, 3, stride=2)),
        nn.Sequential(conv(1088, 256, 1), conv(256, 288, 3, padding=1), conv(288, 320, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


# ---------------------------------------------------------------------------- the networks


class InceptionNet(nn.Module):
    def __init__(self, features: nn.Sequential, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < MIN_SIZE:
            raise CnnTrainError(
                f"{type(self).__name__}: inputs must be at least {MIN_SIZE}x{MIN_SIZE} (the paper's "
                f"unpadded stem and reductions), got {x.shape[-2]}x{x.shape[-1]}; the paper used 299x299")
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(self.dropout(x))


class InceptionV4(InceptionNet):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> None:
        features = nn.Sequential(
            stem_v4(in_channels),
            *[inception_a() for _ in range(4)],
            reduction_a(384, k=192, l=224, m=256, n=384),
            *[inception_b() for _ in range(7)],
            reduction_b(),
            *[inception_c() for _ in range(3)],
        )
        super().__init__(features, 1536, num_classes, dropout)


class InceptionResNetV2(InceptionNet):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> None:
        features = nn.Sequential(
            stem_resnet_v2(in_channels),
            *[block_a() for _ in range(10)],
            reduction_a(320, k=256, l=256, m=384, n=384),
            *[block_b() for _ in range(20)],
            reduction_b_resnet_v2(),
            *[block_c() for _ in range(9)],
            block_c(scale=1.0, relu=False),
            conv(2080, 1536, 1),
        )
        super().__init__(features, 1536, num_classes, dropout)


@register("inception-v4", family="inception", paper=PAPER, input_size=299, year=2016)
def inception_v4(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> nn.Module:
    return InceptionV4(num_classes, in_channels, dropout)


@register("inception-resnet-v2", family="inception", paper=PAPER, input_size=299, year=2016)
def inception_resnet_v2(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> nn.Module:
    return InceptionResNetV2(num_classes, in_channels, dropout)
