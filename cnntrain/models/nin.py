"""Network in Network: Lin, Chen, Yan. "Network In Network". ICLR 2014.

An mlpconv layer is a convolution followed by two 1x1 convolutions (a small MLP slid over
the image, Eq. 2), ReLU after each. The last mlpconv makes one map per class and global
average pooling turns the maps into class scores: no fully connected layer (§3.2).

``nin-cifar`` is the paper's CIFAR-10 network (§4.2): three mlpconv layers, each
followed by 3x3/2 max pooling (32 -> 16 -> 8), dropout 0.5 on the outputs of all but the
last, and global average pooling. The filter counts, not printed in the paper, are
those of the authors' released configuration:

    mlpconv1  5x5 192 -> 1x1 160 -> 1x1 96    -> max 3x3/2 -> dropout
    mlpconv2  5x5 192 -> 1x1 192 -> 1x1 192   -> max 3x3/2 -> dropout
    mlpconv3  3x3 192 -> 1x1 192 -> 1x1 classes -> global average pool

0.97M parameters for 10 classes. (The released configuration averages rather than
max-pools after mlpconv2; the paper's text says max pooling throughout, which we follow.)

``nin-imagenet`` is the authors' 4-mlpconv ImageNet model (released with the paper's
code, 7.6M parameters for 1000 classes):

    mlpconv1  11x11/4 96 -> 1x1 96 -> 1x1 96         -> max 3x3/2
    mlpconv2  5x5 256    -> 1x1 256 -> 1x1 256       -> max 3x3/2
    mlpconv3  3x3 384    -> 1x1 384 -> 1x1 384       -> max 3x3/2 -> dropout
    mlpconv4  3x3 1024   -> 1x1 1024 -> 1x1 classes  -> global average pool

The ReLU of Eq. 2 also follows the class maps, as in the paper and its released models,
so the averaged scores are non-negative (``class_relu=False`` drops that ReLU, leaving
signed scores; otherwise a class whose map is negative everywhere gets no gradient).
Pools round up (ceil mode, as the released models did: 32 -> 16 -> 8 on CIFAR); those of
``nin-imagenet`` are :class:`SafeMaxPool2d` so it also runs on 32x32 inputs. The paper
gives no initialisation; convolutions use He et al. (2015), biases 0.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models.alexnet import SafeMaxPool2d
from cnntrain.models.registry import register

PAPER = "Lin, Chen, Yan. Network In Network. ICLR 2014"


class MLPConv(nn.Sequential):
    """Conv kxk -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv -> ReLU (Eq. 2)."""

    def __init__(self, cin: int, widths: tuple[int, int, int], kernel: int, stride: int = 1,
                 padding: int = 0, last_relu: bool = True) -> None:
        w1, w2, w3 = widths
        super().__init__(
            nn.Conv2d(cin, w1, kernel, stride=stride, padding=padding), nn.ReLU(inplace=True),
            nn.Conv2d(w1, w2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(w2, w3, 1), nn.ReLU(inplace=True) if last_relu else nn.Identity(),
        )


class NiN(nn.Module):
    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # global average pooling: one score per map
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


def _pool() -> nn.Module:
    return SafeMaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


@register("nin-cifar", family="nin", paper=PAPER, input_size=32, year=2013)
def nin_cifar(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5,
              class_relu: bool = True) -> nn.Module:
    return NiN(nn.Sequential(
        MLPConv(in_channels, (192, 160, 96), kernel=5, padding=2), _pool(), nn.Dropout(dropout),
        MLPConv(96, (192, 192, 192), kernel=5, padding=2), _pool(), nn.Dropout(dropout),
        MLPConv(192, (192, 192, num_classes), kernel=3, padding=1, last_relu=class_relu),
    ))


@register("nin-imagenet", family="nin", paper=PAPER, input_size=224, year=2013)
def nin_imagenet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                 class_relu: bool = True) -> nn.Module:
    return NiN(nn.Sequential(
        MLPConv(in_channels, (96, 96, 96), kernel=11, stride=4), _pool(),
        MLPConv(96, (256, 256, 256), kernel=5, padding=2), _pool(),
        MLPConv(256, (384, 384, 384), kernel=3, padding=1), _pool(), nn.Dropout(dropout),
        MLPConv(384, (1024, 1024, num_classes), kernel=3, padding=1, last_relu=class_relu),
    ))
