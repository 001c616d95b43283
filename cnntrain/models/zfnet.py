"""ZFNet: Zeiler, Fergus. "Visualizing and Understanding Convolutional Networks". ECCV 2014.

AlexNet revised after looking at its features (Fig. 3 and §4.1): a smaller, denser
first layer, and the wider middle layers of Table 3's best single model:

    224x224x3
    conv1 96@7x7 stride 2 (pad 1)  -> 110x110 -> ReLU -> max 3x3/2 -> 55x55 -> LRN
    conv2 256@5x5 stride 2         ->  26x26  -> ReLU -> max 3x3/2 -> 13x13 -> LRN
    conv3 512@3x3  (pad 1) -> ReLU
    conv4 1024@3x3 (pad 1) -> ReLU
    conv5 512@3x3  (pad 1) -> ReLU -> max 3x3/2 -> 6x6x512
    FC 4096 -> ReLU -> FC 4096 -> ReLU -> FC classes, dropout 0.5 before both hidden FCs

107.6M parameters for 1000 classes (Fig. 3's narrower 384-384-256 version has 62.4M).
Unlike AlexNet, pooling comes before the cross-map contrast normalisation, as the
Fig. 3 caption orders them; the normalisation is AlexNet's LRN (the paper gives no
constants and its code descends from Krizhevsky's). The pools round up (ceil mode), which
is what gives the paper's 55x55 and 13x13 maps. All weights start from N(0, 1e-2) and
biases at 0 (§3). The paper's renormalisation of conv filters whose RMS exceeds 0.1 is a
training-time step and is not done here.

The pools are :class:`SafeMaxPool2d` (identical at 224), so 32x32 inputs also run.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models.alexnet import SafeMaxPool2d, paper_lrn
from cnntrain.models.registry import register

PAPER = "Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014"


class ZFNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=7, stride=2, padding=1),  # conv1: 110x110
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 55x55
            paper_lrn(),
            nn.Conv2d(96, 256, kernel_size=5, stride=2),  # conv2: 26x26
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 13x13
            paper_lrn(),
            nn.Conv2d(256, 512, kernel_size=3, padding=1),  # conv3
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 1024, kernel_size=3, padding=1),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, kernel_size=3, padding=1),  # conv5
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # 6x6
        )
        # The identity at 224; lets other input sizes reach the 6x6 the FC layer expects.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(512 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, mean=0.0, std=1e-2)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("zfnet", family="zfnet", paper=PAPER, input_size=224, year=2013)
def zfnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return ZFNet(num_classes, in_channels, dropout)
