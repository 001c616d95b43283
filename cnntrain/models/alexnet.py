"""AlexNet: Krizhevsky, Sutskever, Hinton. "ImageNet Classification with Deep
Convolutional Neural Networks". NIPS 2012.

``alexnet`` is the paper's network on one device: conv 96@11x11/4 -> LRN -> max 3x3/2
-> conv 256@5x5 -> LRN -> max 3x3/2 -> conv 384@3x3 -> conv 384@3x3 -> conv 256@3x3 ->
max 3x3/2 -> FC 4096 -> FC 4096 -> FC classes, ReLU after every layer, dropout 0.5
before the two hidden FC layers, overlapping pooling: 62.38M parameters for 1000 classes.

``alexnet-2gpu`` is the network exactly as Figure 2 draws it, split over two GPUs: conv2,
conv4 and conv5 see only the kernel maps of their own tower (grouped convolutions,
groups=2), while conv1 (full input), conv3 and the FC layers are fully connected. That
gives the paper's 60.97M parameters. Response normalisation also stays within a tower,
as each GPU only held its own 48 (or 128) maps.

``alexnet-tv`` is the single-tower variant of torchvision (Krizhevsky 2014, "One weird
trick": 64-192-384-256-256 filters, no LRN): its state dict loads into
``torchvision.models.alexnet()`` with the same keys and shapes, and gives the same
outputs. 61.10M parameters.

A 224 input with 2 pixels of padding on conv1 gives the paper's 55x55x96 maps (the
paper's "224" only works out as 227 without padding). Weights start from N(0, 0.01);
biases are 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere, as §5 says
(used for all three variants). Local response normalisation uses the paper's k=2, n=5,
alpha=1e-4, beta=0.75; PyTorch divides alpha by n, so it is given n*alpha to compute
the paper's formula.

Small inputs: the max pools are :class:`SafeMaxPool2d`, identical to ``nn.MaxPool2d``
wherever that works (224 included) and, on a map smaller than the window, pooling what
there is instead of failing, so the networks also run on 32x32 images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from cnntrain.models.registry import register

PAPER = "Krizhevsky, Sutskever, Hinton. ImageNet Classification with Deep Convolutional Neural Networks. NIPS 2012"
PAPER_TV = "Krizhevsky. One weird trick for parallelizing convolutional neural networks. arXiv 2014"


def paper_lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


class SafeMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that accepts maps smaller than its window.

    Such a map is padded with -inf up to the window (padding that never wins a max), so
    it pools to one pixel holding the maximum of what there is. Wherever ``nn.MaxPool2d``
    itself works the result is identical, so pretrained weights and paper-size outputs
    are unaffected; this only lets the classic nets run on 32x32 inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (ph, pw) = _pair(self.kernel_size), _pair(self.padding)
        short_h = max(0, kh - x.shape[-2] - 2 * ph)
        short_w = max(0, kw - x.shape[-1] - 2 * pw)
        if short_h or short_w:
            x = F.pad(x, (0, short_w, 0, short_h), value=float("-inf"))
        return super().forward(x)


class TowerLRN(nn.Module):
    """The paper's LRN applied separately within each of ``towers`` channel groups (on
    two GPUs the normalisation window never crossed from one GPU's maps to the other's)."""

    def __init__(self, towers: int) -> None:
        super().__init__()
        self.towers = towers
        self.lrn = paper_lrn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.towers == 1:
            return self.lrn(x)
        return torch.cat([self.lrn(part) for part in x.chunk(self.towers, dim=1)], dim=1)


def paper_init(convs: list[nn.Conv2d], fcs: list[nn.Linear]) -> None:
    """§5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers
    (to give the ReLUs positive inputs early on), 0 elsewhere."""
    ones = {convs[1], convs[3], convs[4], fcs[0], fcs[1]}
    for layer in convs + fcs:
        nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        nn.init.constant_(layer.bias, 1.0 if layer in ones else 0.0)


def _classifier(num_classes: int, dropout: float, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(width * 6 * 6, 4096),  # fc6
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(4096, 4096),  # fc7
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),  # fc8
    )


class _FeaturesThenClassifier(nn.Module):
    """``features`` -> 6x6 average pool -> the FC classifier, with the paper's init;
    shared by the paper's layout and torchvision's (same module names in both)."""

    features: nn.Sequential

    def _finish(self, num_classes: int, dropout: float) -> None:
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(num_classes, dropout, 256)
        paper_init([m for m in self.features if isinstance(m, nn.Conv2d)],
                   [m for m in self.classifier if isinstance(m, nn.Linear)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class AlexNet(_FeaturesThenClassifier):
    """The paper's AlexNet; ``towers=2`` keeps conv2/4/5 and LRN within each GPU's half."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                 lrn: bool = True, towers: int = 1) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return TowerLRN(towers) if lrn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=2),  # conv1
            nn.ReLU(inplace=True),
            norm(),
            SafeMaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=towers),  # conv2
            nn.ReLU(inplace=True),
            norm(),
            SafeMaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # conv3: sees both towers
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=towers),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=towers),  # conv5
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2),
        )
        self._finish(num_classes, dropout)


class AlexNetTV(_FeaturesThenClassifier):
    """torchvision's single-tower AlexNet (64-192-384-256-256, no LRN), same module names."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            SafeMaxPool2d(kernel_size=3, stride=2),
        )
        self._finish(num_classes, dropout)


@register("alexnet", family="alexnet", paper=PAPER, input_size=224, year=2012)
def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = True) -> nn.Module:
    return AlexNet(num_classes, in_channels, dropout, lrn)


@register("alexnet-2gpu", family="alexnet", paper=PAPER, input_size=224, year=2012)
def alexnet_2gpu(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                 lrn: bool = True) -> nn.Module:
    return AlexNet(num_classes, in_channels, dropout, lrn, towers=2)


@register("alexnet-tv", family="alexnet", paper=PAPER_TV, input_size=224, year=2014)
def alexnet_tv(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return AlexNetTV(num_classes, in_channels, dropout)
