"""LeNet-5: LeCun, Bottou, Bengio, Haffner. "Gradient-Based Learning Applied to Document
Recognition". Proc. IEEE 1998.

32x32 input -> C1 6@5x5 -> S2 2x2 subsampling -> C3 16@5x5 -> S4 2x2 -> C5/F5 120
-> F6 84 -> output, with tanh activations: 61,706 parameters for 10 classes.

Two simplifications, both standard and both parameter-free so the count stays the
paper's: the subsampling layers are plain 2x2 average pooling (the paper's had one
trainable coefficient and bias per map), C3 connects to all six S2 maps (the paper's
Table I used a sparse connection scheme), and the output is a linear layer trained with
cross-entropy instead of Euclidean RBF units.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.errors import CnnTrainError
from cnntrain.models.registry import register

PAPER = "LeCun et al. Gradient-Based Learning Applied to Document Recognition. Proc. IEEE 1998"


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, activation: str = "tanh") -> None:
        super().__init__()
        act: type[nn.Module] = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 32 -> 28
            act(),
            nn.AvgPool2d(2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            act(),
            nn.AvgPool2d(2),  # S4: 10 -> 5
        )
        # C5 is a 5x5 convolution over a 5x5 map, i.e. a fully connected layer; the
        # adaptive pool lets other input sizes through without changing the count.
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),  # C5
            act(),
            nn.Linear(120, 84),  # F6
            act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register("lenet5", family="lenet", paper=PAPER, input_size=32, year=1998)
def lenet5(num_classes: int = 10, in_channels: int = 1, activation: str = "tanh") -> nn.Module:
    if activation not in ("tanh", "relu"):
        raise CnnTrainError(f"lenet5: activation must be 'tanh' or 'relu', got {activation!r}")
    return LeNet5(num_classes, in_channels, activation)
