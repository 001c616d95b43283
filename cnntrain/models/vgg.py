"""VGG: Simonyan, Zisserman. "Very Deep Convolutional Networks for Large-Scale Image
Recognition". ICLR 2015.

The six configurations of Table 1, stacks of 3x3 convolutions (stride 1, pad 1, ReLU)
with 2x2/2 max pooling between five stages, then FC 4096 -> FC 4096 -> FC classes with
dropout 0.5 after the first two FC layers (§3.1):

    name       config  weight layers                                  params (1000 classes)
    vgg11      A       8 conv + 3 FC                                  132.86M
    vgg11-lrn  A-LRN   A with the AlexNet LRN after the first conv    132.86M
    vgg13      B       10 conv + 3 FC                                 133.05M
    vgg16-c    C       B + a 1x1 conv closing stages 3, 4 and 5       133.64M
    vgg16      D       13 conv + 3 FC (3x3 everywhere)                138.36M
    vgg19      E       16 conv + 3 FC                                 143.67M

``*_bn`` variants add batch normalisation (Ioffe & Szegedy 2015, after the paper) after
each convolution. Module names and shapes follow torchvision (``features``, ``avgpool``,
``classifier``), so ``vgg11``/``13``/``16``/``19`` and their ``_bn`` variants load into
``torchvision.models.vgg*`` and back and compute the same function.

The paper's fully connected layers see a 7x7x512 map at 224 (its test-time "dense"
evaluation turns them into convolutions instead); an adaptive 7x7 average pool, the
identity at 224, lets other sizes through, so 32x32 CIFAR images work too.

Initialisation (§3.1): the paper trained A from a zero-mean normal of "10^-2 variance",
initialised the deeper nets from A, and notes that Glorot & Bengio (2010) initialisation
trains every depth without that pre-training. ``init="glorot"`` (the default for the
plain nets) is that, biases 0; ``init="normal"`` is N(0, std 0.01), the common reading
of the paper's A (taken literally, variance 1e-2 would be std 0.1); ``init="kaiming"`` is
torchvision's (He fan-out convs, N(0, 0.01) FC), the default for the ``_bn`` variants,
whose BN layers start as the identity.
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.errors import CnnTrainError
from cnntrain.models.alexnet import paper_lrn
from cnntrain.models.registry import register

PAPER = "Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image Recognition. ICLR 2015"

# Table 1. An int is a 3x3 conv with that many filters, "1:n" a 1x1 conv, "M" a max pool,
# "LRN" local response normalisation.
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "1:256", "M", 512, 512, "1:512", "M",
          512, 512, "1:512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_features(config: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """Conv (+BN) + ReLU per entry; the same layout and indices as torchvision's make_layers."""
    layers: list[nn.Module] = []
    cin = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(paper_lrn())
        else:
            one_by_one = isinstance(item, str)
            cout = int(item.split(":")[1]) if one_by_one else int(item)
            kernel, pad = (1, 0) if one_by_one else (3, 1)
            layers.append(nn.Conv2d(cin, cout, kernel_size=kernel, padding=pad))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, config: str, num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = False, dropout: float = 0.5, init: str = "glorot") -> None:
        super().__init__()
        self.features = make_features(CONFIGS[config], in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        self._init(init)

    def _init(self, init: str) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "glorot":
                    nn.init.xavier_uniform_(m.weight)
                elif init == "normal" or isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:  # kaiming, as torchvision
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


_INITS = ("glorot", "normal", "kaiming")


def _register(name: str, config: str, batch_norm: bool) -> None:
    default_init = "kaiming" if batch_norm else "glorot"

    @register(name, family="vgg", paper=PAPER, input_size=224, year=2014)
    def build(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
              init: str = default_init) -> nn.Module:
        if init not in _INITS:
            raise CnnTrainError(f"{name}: init must be one of {', '.join(_INITS)}, got {init!r}")
        return VGG(config, num_classes, in_channels, batch_norm, dropout, init)

    build.__name__ = name.replace("-", "_")


for _name, _config in (("vgg11", "A"), ("vgg11-lrn", "A-LRN"), ("vgg13", "B"), ("vgg16-c", "C"),
                       ("vgg16", "D"), ("vgg19", "E")):
    _register(_name, _config, batch_norm=False)
    if _config != "A-LRN":  # LRN and BN together would make no sense
        _register(f"{_name}_bn", _config, batch_norm=True)
