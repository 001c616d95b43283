"""AlexNet: Krizhevsky, Sutskever, Hinton. "ImageNet Classification with Deep
Convolutional Neural Networks". NIPS 2012.

The paper's network on one device: conv 96@11x11/4 -> LRN -> max 3x3/2 -> conv 256@5x5
-> LRN -> max 3x3/2 -> conv 384@3x3 -> conv 384@3x3 -> conv 256@3x3 -> max 3x3/2 ->
FC 4096 -> FC 4096 -> FC classes, ReLU after every layer, dropout 0.5 before the two
hidden FC layers, overlapping pooling, about 61M parameters for 1000 classes.

A 224 input with 2 pixels of padding on conv1 gives the paper's 55x55x96 maps (the
paper's "224" only works out as 227 without padding). Weights start from N(0, 0.01);
biases are 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere, as §5 says.
Local response normalisation uses the paper's k=2, n=5, alpha=1e-4, beta=0.75; PyTorch
divides alpha by n, so it is given n*alpha to compute the paper's formula.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models.registry import register

PAPER = "Krizhevsky, Sutskever, Hinton. ImageNet Classification with Deep Convolutional Neural Networks. NIPS 2012"


def paper_lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                 lrn: bool = True) -> None:
        super().__init__()
        norm = paper_lrn if lrn else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=2),  # conv1
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),  # conv2
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # conv3
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # fc8
        )
        self._paper_init()

    def _paper_init(self) -> None:
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        ones = {convs[1], convs[3], convs[4], fcs[0], fcs[1]}
        for layer in convs + fcs:
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            nn.init.constant_(layer.bias, 1.0 if layer in ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("alexnet", family="alexnet", paper=PAPER, input_size=224, year=2012)
def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = True) -> nn.Module:
    return AlexNet(num_classes, in_channels, dropout, lrn)
