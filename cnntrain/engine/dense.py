"""Dense evaluation (Simonyan & Zisserman 2015 Sect. 3.2; He et al. 2016 Sect. 3.4): the
trained network applied to the whole rescaled test image, its fully-connected layers as
convolutions, and the class-score map averaged over space.

:func:`fully_convolutional` converts, with the same weights: the first FC layer, which
reads a flattened k x k map, becomes a k x k convolution (VGG: 7x7), the later ones 1x1
convolutions. On an image of the training size the score map is 1x1 and the scores equal
the FC model's (tested). A network that ends in global average pooling and one FC layer
(GoogLeNet, ResNet, ...) already is fully convolutional: the FC of the mean feature is the
mean of the 1x1-convolution scores, so it is used as it is on the whole image.

:class:`DenseScorer` rescales a batch to each test scale Q (shorter side), adds the
mirrored image when the protocol says so, and returns one row of spatially averaged
scores per view, for the evaluator to average the softmax of.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.data.transforms import shorter_side_size
from cnntrain.errors import CnnTrainError

PASS_THROUGH = (nn.ReLU, nn.Tanh, nn.Dropout, nn.Identity)


class ConvClassifier(nn.Module):
    """features -> (classifier as convolutions) -> mean over the score map."""

    def __init__(self, features: nn.Module, window: int, head: nn.Sequential) -> None:
        super().__init__()
        self.features, self.window, self.head = features, window, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        h, w = x.shape[-2:]
        k = self.window
        if h < k or w < k:  # what the FC model's adaptive pool does on a small input
            x = F.adaptive_avg_pool2d(x, (max(h, k), max(w, k)))
        return self.head(x).mean((2, 3))


def _conv_from_linear(fc: nn.Linear, window: int) -> nn.Conv2d:
    channels = fc.in_features // (window * window)
    conv = nn.Conv2d(channels, fc.out_features, window, bias=fc.bias is not None,
                     device=fc.weight.device, dtype=fc.weight.dtype)
    with torch.no_grad():
        # torch.flatten orders (C, H, W): the FC weight row reshapes to a (C, k, k) kernel
        conv.weight.copy_(fc.weight.reshape(fc.out_features, channels, window, window))
        if fc.bias is not None:
            conv.bias.copy_(fc.bias)
    return conv


def _flatten_head(model: nn.Module) -> tuple[nn.Module, int, nn.Sequential] | None:
    """(features, pooled window k, classifier) of a features -> k x k pool -> flatten -> FC
    network (AlexNet, ZFNet, VGG, LeNet-5), or None for any other layout."""
    features = getattr(model, "features", None)
    pool = getattr(model, "avgpool", getattr(model, "pool", None))
    classifier = getattr(model, "classifier", None)
    if not (isinstance(features, nn.Module) and isinstance(pool, nn.AdaptiveAvgPool2d)
            and isinstance(classifier, nn.Sequential)):
        return None
    size = pool.output_size
    k = size if isinstance(size, int) else size[0]
    if k is None or k <= 1:
        return None
    return features, k, classifier


def fully_convolutional(model: nn.Module, arch: str = "model") -> nn.Module:
    """``model`` with its FC layers as convolutions (same weights), returning the spatial
    mean of its score map; a global-pooling network is returned as it is."""
    parts = _flatten_head(model)
    if parts is None:
        return model
    features, k, classifier = parts
    layers: list[nn.Module] = []
    window = k
    for layer in classifier:
        if isinstance(layer, nn.Flatten):
            continue
        if isinstance(layer, nn.Linear):
            layers.append(_conv_from_linear(layer, window))
            window = 1
        elif isinstance(layer, PASS_THROUGH):
            layers.append(layer)
        else:
            raise CnnTrainError(f"{arch}: dense evaluation cannot turn the classifier's {type(layer).__name__} "
                                "into a convolution; use a crop protocol (--protocol list)")
    return ConvClassifier(features, k, nn.Sequential(*layers)).eval()


class DenseScorer(nn.Module):
    """One row of spatially averaged scores per (scale, mirror) view: (N * V, classes)."""

    def __init__(self, network: nn.Module, scales: list[int], flips: bool, size: int) -> None:
        super().__init__()
        self.network, self.scales, self.flips, self.size = network, scales, flips, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = []
        for q in self.scales:
            hw = shorter_side_size(h, w, max(q, self.size))
            scaled = x if hw == (h, w) else F.interpolate(x, size=hw, mode="bilinear", antialias=True,
                                                          align_corners=False)
            for view in (scaled, scaled.flip(-1)) if self.flips else (scaled,):
                out = self.network(view)
                rows.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.stack(rows, 1).flatten(0, 1)
