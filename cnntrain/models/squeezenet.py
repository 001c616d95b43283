"""SqueezeNet: Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer. "SqueezeNet: AlexNet-level
accuracy with 50x fewer parameters and <0.5MB model size". arXiv 2016.

A fire module (Fig. 1) squeezes with 1x1 convolutions, then expands with 1x1 and 3x3
convolutions side by side, concatenated; ReLU after each. ``squeezenet1.0`` is Table 1:
conv1 96@7x7/2 -> max 3x3/2 -> fire2-4 -> max 3x3/2 -> fire5-8 -> max 3x3/2 -> fire9 ->
dropout 0.5 -> conv10 (1x1, one map per class) + ReLU -> global average pooling, no FC
layer: 1.25M parameters for 1000 classes. ``squeezenet1.1`` is the authors' v1.1
(released with the paper's code): conv1 64@3x3/2 and the pools moved earlier, the same
accuracy for 2.4x less computation, 1.24M parameters.

Module names and shapes follow torchvision, so both load into
``torchvision.models.squeezenet1_0`` / ``squeezenet1_1`` and back with the same outputs.
The pools round up (ceil mode, as the authors' Caffe models); the final pool is global
(the paper's 13x13 average pool at 224), so 32x32 inputs work too. Initialisation, which
the paper does not state, follows the authors' released models: Caffe "xavier" (uniform,
variance 1/fan_in) everywhere except conv10, N(0, 0.01); biases 0.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cnntrain.models.registry import register

PAPER = ("Iandola et al. SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and "
         "<0.5MB model size. arXiv 2016")


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    def __init__(self, version: str, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        if version == "1.0":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True), _pool(),
                Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), _pool(),
                Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), _pool(),
                Fire(512, 64, 256, 256),
            )
        elif version == "1.1":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), _pool(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"SqueezeNet version must be '1.0' or '1.1', got {version!r}")
        conv10 = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), conv10, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is conv10:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:  # Caffe "xavier": U(-a, a) with a = sqrt(3 / fan_in)
                    bound = math.sqrt(3.0 / m.weight[0].numel())
                    nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


@register("squeezenet1.0", family="squeezenet", paper=PAPER, input_size=224, year=2016)
def squeezenet1_0(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return SqueezeNet("1.0", num_classes, in_channels, dropout)


@register("squeezenet1.1", family="squeezenet", paper=PAPER, input_size=224, year=2016)
def squeezenet1_1(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return SqueezeNet("1.1", num_classes, in_channels, dropout)
