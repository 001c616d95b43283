"""GoogLeNet: Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke, Rabinovich.
"Going Deeper with Convolutions". CVPR 2015.

``googlenet`` is Table 1 and Figure 3 of the paper: a stem (conv 7x7/2 -> max 3x3/2 ->
LRN -> conv 1x1 64 -> conv 3x3 192 -> LRN -> max 3x3/2), nine Inception modules with
dimension reduction (:class:`Inception`, Fig. 2b) in stages 3a-3b / 4a-4e / 5a-5b with
3x3/2 max pooling between stages, global 7x7 average pooling, dropout 0.4 and one linear
layer. Each module's widths are Table 1's columns (#1x1, #3x3 reduce, #3x3, #5x5
reduce, #5x5, pool proj). Every convolution has a bias and a ReLU. 7.0M parameters for
1000 classes without the auxiliary heads: Table 1's "params" column sums to the paper's
"6.8M", but it counts weights only and its "K" is 1024; summed that way our layers
match the column row by row (the tests check it).

The two auxiliary classifiers of §5 sit on the outputs of 4a and 4d: average pool 5x5/3
(-> 4x4), 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 0.7, linear. In training mode
``forward`` returns ``(main, aux1, aux2)`` (the engine adds the auxiliary losses with
weight 0.3); in eval mode the heads are skipped and it returns the main logits only.
``aux_logits=False`` builds the network without them. The naive module (Fig. 2a) is
:class:`InceptionNaive`, for experiments.

The paper gives no LRN constants nor initialisation; both follow the BVLC Caffe
reproduction: LRN size 5, alpha 1e-4, beta 0.75, k 1; Caffe "xavier" weights (uniform,
variance 1/fan_in), biases 0.2 in hidden layers and 0 in the classifiers. Pools round up
(ceil mode; "same" pooling in the paper, 112 -> 56). The final 7x7 average pool is an
adaptive global pool (the same at 224), and an auxiliary head uses the paper's 5x5/3 pool
whenever that gives 4x4 and adaptive 4x4 pooling otherwise, so 32x32 inputs run too.

``googlenet-tv`` is torchvision's version, whose state dict loads into
``torchvision.models.googlenet(aux_logits=True, init_weights=True)`` and back with the
same eval outputs: batch-normalised convolutions without bias, no LRN, a 3x3 (not 5x5)
convolution in the "5x5" branch, a 2x2/2 pool before stage 5, adaptive 4x4 pooling in the
auxiliary heads, dropout 0.2, truncated N(0, 0.01) initialisation; 6.6M parameters.
``transform_input=True`` reproduces torchvision's option for its pretrained weights
(which expect inputs normalised with mean 0.5, std 0.5); its default is False, as here.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.errors import CnnTrainError
from cnntrain.models.registry import register

PAPER = "Szegedy et al. Going Deeper with Convolutions. CVPR 2015"

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
TABLE1: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def out_channels(widths: tuple[int, int, int, int, int, int]) -> int:
    n1x1, _, n3x3, _, n5x5, pool_proj = widths
    return n1x1 + n3x3 + n5x5 + pool_proj


class ConvReLU(nn.Module):
    """The paper's convolution: with bias, followed by a ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class BasicConv2d(nn.Module):
    """torchvision's convolution: no bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionNaive(nn.Module):
    """Fig. 2a: 1x1, 3x3 and 5x5 convolutions and 3x3 max pooling side by side, concatenated
    (the pooled input passes through, so the width can only grow)."""

    def __init__(self, cin: int, n1x1: int, n3x3: int, n5x5: int,
                 conv_block: Callable[..., nn.Module] = ConvReLU) -> None:
        super().__init__()
        self.branch1 = conv_block(cin, n1x1, kernel_size=1)
        self.branch2 = conv_block(cin, n3x3, kernel_size=3, padding=1)
        self.branch3 = conv_block(cin, n5x5, kernel_size=5, padding=2)
        self.branch4 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class Inception(nn.Module):
    """Fig. 2b: 1x1 convolutions reduce the width before the 3x3 and 5x5 convolutions and
    project the pooled branch. ``big_kernel=3`` gives torchvision's variant."""

    def __init__(self, cin: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
                 pool_proj: int, conv_block: Callable[..., nn.Module] = ConvReLU,
                 big_kernel: int = 5) -> None:
        super().__init__()
        self.branch1 = conv_block(cin, n1x1, kernel_size=1)
        self.branch2 = nn.Sequential(conv_block(cin, n3x3red, kernel_size=1),
                                     conv_block(n3x3red, n3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(conv_block(cin, n5x5red, kernel_size=1),
                                     conv_block(n5x5red, n5x5, kernel_size=big_kernel,
                                                padding=big_kernel // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     conv_block(cin, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def aux_pool(x: torch.Tensor) -> torch.Tensor:
    """§5's average pool 5x5/3 (14x14 -> 4x4 at 224); adaptive 4x4 where that would not
    give the 4x4 the FC layer expects (inputs far from 224)."""
    h, w = x.shape[-2:]
    if (h - 5) // 3 + 1 == 4 and (w - 5) // 3 + 1 == 4:
        return F.avg_pool2d(x, kernel_size=5, stride=3)
    return F.adaptive_avg_pool2d(x, 4)


class InceptionAux(nn.Module):
    """An auxiliary classifier (§5); ``paper=False`` gives torchvision's (BN conv, adaptive pool)."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.7, paper: bool = True) -> None:
        super().__init__()
        self.paper = paper
        self.conv = (ConvReLU if paper else BasicConv2d)(cin, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = aux_pool(x) if self.paper else F.adaptive_avg_pool2d(x, 4)
        x = torch.flatten(self.conv(x), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNet(nn.Module):
    """The paper's network (``paper=True``) or torchvision's (``paper=False``); both share
    torchvision's module names where they share modules."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 dropout: float = 0.4, dropout_aux: float = 0.7, paper: bool = True,
                 transform_input: bool = False) -> None:
        super().__init__()
        self.paper, self.transform_input = paper, transform_input
        conv = ConvReLU if paper else BasicConv2d
        lrn = (lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)) if paper else nn.Identity

        self.conv1 = conv(in_channels, 64, kernel_size=7, stride=2, padding=3)  # 112x112
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # 56x56
        self.lrn1 = lrn()
        self.conv2 = conv(64, 64, kernel_size=1)
        self.conv3 = conv(64, 192, kernel_size=3, padding=1)
        self.lrn2 = lrn()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # 28x28

        def module(name: str, cin: int) -> Inception:
            return Inception(cin, *TABLE1[name], conv_block=conv, big_kernel=5 if paper else 3)

        self.inception3a = module("3a", 192)
        self.inception3b = module("3b", 256)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # 14x14
        self.inception4a = module("4a", 480)
        self.inception4b = module("4b", 512)
        self.inception4c = module("4c", 512)
        self.inception4d = module("4d", 512)
        self.inception4e = module("4e", 528)
        # 7x7: the paper's 3x3/2, torchvision's 2x2/2 (same size at 224).
        self.maxpool4 = nn.MaxPool2d(3 if paper else 2, stride=2, ceil_mode=True)
        self.inception5a = module("5a", 832)
        self.inception5b = module("5b", 832)

        self.aux_logits = aux_logits
        self.aux1 = InceptionAux(512, num_classes, dropout_aux, paper) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, dropout_aux, paper) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # the paper's 7x7 average pool at 224
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        if paper:
            self._paper_init()
        else:
            self._torchvision_init()

    def _paper_init(self) -> None:
        classifiers = {self.fc} | {m.fc2 for m in (self.aux1, self.aux2) if m is not None}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # Caffe's "xavier": U(-a, a) with a = sqrt(3 / fan_in).
                fan_in = m.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.constant_(m.bias, 0.0 if m in classifiers else 0.2)

    def _torchvision_init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's transform_input: ImageNet-normalised input -> (x - 0.5) / 0.5,
        computed in torchvision's order so the results agree to the bit."""
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return torch.cat([x[:, c:c + 1] * (std[c] / 0.5) + (mean[c] - 0.5) / 0.5 for c in range(3)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.transform_input:
            x = self._transform(x)
        x = self.lrn1(self.maxpool1(self.conv1(x)))
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        with_aux = self.training and self.aux1 is not None
        aux1 = self.aux1(x) if with_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if with_aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if with_aux:
            return x, aux1, aux2
        return x


@register("googlenet", family="googlenet", paper=PAPER, input_size=224, year=2014)
def googlenet(num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
              dropout: float = 0.4, dropout_aux: float = 0.7) -> nn.Module:
    return GoogLeNet(num_classes, in_channels, aux_logits, dropout, dropout_aux, paper=True)


@register("googlenet-tv", family="googlenet", paper=PAPER, input_size=224, year=2014)
def googlenet_tv(num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 dropout: float = 0.2, dropout_aux: float = 0.7, transform_input: bool = False) -> nn.Module:
    if transform_input and in_channels != 3:
        raise CnnTrainError("googlenet-tv: transform_input needs RGB input (in_channels=3)")
    return GoogLeNet(num_classes, in_channels, aux_logits, dropout, dropout_aux, paper=False,
                     transform_input=transform_input)
