"""The papers' test protocols as named presets (``cnntrain eval --protocol NAME``): which
views of a test image are scored, and at which scales. The engine's side (scoring the
views, dense evaluation) is :mod:`cnntrain.engine.protocols`.

| preset | paper | views per image |
| --- | --- | --- |
| ``center`` | the single-crop test (e.g. SENet Table 2, ResNeXt Sect. 5.1) | 1 |
| ``center-flip`` | FFCV's ImageNet example (``validation.lr_tta``): the crop and its mirror | 2 |
| ``10crop`` | Krizhevsky et al. 2012 Sect. 4.1; He et al. 2016 Sect. 3.4 / Table 3 | 10 |
| ``vgg-dense`` | Simonyan & Zisserman 2015 Sect. 3.2 (dense), Q per Sect. 4.2 | 2 per scale |
| ``vgg-multicrop`` | Simonyan & Zisserman 2015 Sect. 3.2: 5x5 grid x 2 flips | 50 per scale |
| ``googlenet-144`` | Szegedy et al. 2015 Sect. 7: 4 scales x 3 squares x 6 crops x 2 | 144 |
| ``resnet-fcn-multiscale`` | He et al. 2016 Sect. 3.4: fully convolutional, 5 scales | 5 |

Crops are ``data.eval_size`` (the recipe's test crop; ``data.train_size`` when unset).
Scales. ``center``, ``center-flip``, ``10crop``: the recipe's ``data.eval_resize``. VGG's Q are the
recipe's ``eval.scales`` (the VGG recipes hold Sect. 4.2's Q: {S-32, S, S+32} for a fixed
training S, {256, 384, 512} for S in [256, 512]), else ``data.eval_resize``. GoogLeNet's
256/288/320/352 and ResNet's 224/256/384/480/640 are the papers' sides for a 224 crop: a
recipe with another ``data.train_size`` gets them scaled by train_size/224 (rounded, never
below the crop), so the same protocol runs on 32-pixel CIFAR or digits. ``--scales``
replaces any preset's scales (pixels, at the recipe's size): that is how a test scales a
preset down further.

Crop protocols give a (V, C, S, S) uint8 stack per image that the evaluator averages
(softmax); dense protocols hand over the whole image, which the engine rescales to each Q.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from cnntrain.data.transforms import EVAL_VIEW, EvalView, resize_shorter, shorter_side_size
from cnntrain.errors import CnnTrainError, did_you_mean
from cnntrain.recipe import EVAL_PROTOCOLS, Recipe

PAPER_CROP = 224  # the crop side the papers' scales are given for


@dataclass(frozen=True)
class Protocol:
    """A preset: its paper, what it does, and how its views are laid out."""

    name: str
    paper: str
    what: str
    layout: str  # "center", "ten", "grid5", "googlenet" (crop protocols) or "dense"
    flips: bool
    scales: str  # "resize": data.eval_resize; "recipe": eval.scales else eval_resize; else paper px
    paper_scales: tuple[int, ...] = ()

    @property
    def dense(self) -> bool:
        return self.layout == "dense"


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("center", "single-crop test (e.g. Hu et al. 2018 Table 2; Xie et al. 2017 Sect. 5.1)",
             "one centre crop of the image resized to data.eval_resize", "center", False, "resize"),
    Protocol("center-flip", "FFCV ImageNet example (ffcv-imagenet train_imagenet.py, validation.lr_tta)",
             "the centre crop at data.eval_resize and its mirror; softmax averaged (FFCV sums the logits)",
             "center", True, "resize"),
    Protocol("10crop", "Krizhevsky et al. 2012 Sect. 4.1; He et al. 2016 Table 3",
             "four corner and the centre crops and their mirrors, at data.eval_resize", "ten", True, "resize"),
    Protocol("vgg-dense", "Simonyan & Zisserman 2015 Sect. 3.2 (Q: Sect. 4.2)",
             "FC layers as convolutions over the whole image at each Q, class-score map averaged, "
             "with the mirrored image; softmax averaged", "dense", True, "recipe"),
    Protocol("vgg-multicrop", "Simonyan & Zisserman 2015 Sect. 3.2",
             "50 crops per scale Q (5x5 regular grid, 2 flips): 150 over 3 scales", "grid5", True, "recipe"),
    Protocol("googlenet-144", "Szegedy et al. 2015 Sect. 7",
             "shorter side 256/288/320/352; left, centre and right squares (top/centre/bottom for portraits); "
             "4 corner and centre crops and the square resized; mirrored: 4x3x6x2 = 144",
             "googlenet", True, "paper", (256, 288, 320, 352)),
    Protocol("resnet-fcn-multiscale", "He et al. 2016 Sect. 3.4",
             "fully-convolutional form, scores averaged over shorter sides 224/256/384/480/640 "
             "(no flips stated)", "dense", False, "paper", (224, 256, 384, 480, 640)),
)}
assert tuple(PROTOCOLS) == EVAL_PROTOCOLS  # the recipe schema checks names against this list


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise CnnTrainError(f"--protocol {name!r} is not a preset{did_you_mean(name, PROTOCOLS)}; "
                            f"`cnntrain eval --protocol list` shows them: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_scales(protocol: Protocol, recipe: Recipe, override: list[int] | None = None) -> tuple[list[int], str]:
    """The shorter sides this protocol uses for ``recipe``, and how they were chosen."""
    size = recipe.data.eval_size or recipe.data.train_size
    resize = max(recipe.data.eval_resize or size, size)
    if override:
        return [max(s, size) for s in override], "from --scales"
    if protocol.scales == "resize":
        return [resize], "data.eval_resize"
    if protocol.scales == "recipe":
        if recipe.eval.scales:
            return list(recipe.eval.scales), "the recipe's eval.scales"
        return [resize], "data.eval_resize (the recipe has no eval.scales)"
    scaled = [max(size, round(s * size / PAPER_CROP)) for s in protocol.paper_scales]
    paper = "/".join(map(str, protocol.paper_scales))
    if size == PAPER_CROP:
        return scaled, "the paper's"
    return scaled, f"the paper's {paper} scaled to {size}px crops"


def _squares(h: int, w: int) -> list[tuple[int, int, int]]:
    """GoogLeNet's three squares of an (h, w) image: (top, left, side)."""
    side = min(h, w)
    if w >= h:
        return [(0, left, side) for left in (0, (w - side) // 2, w - side)]
    return [(top, 0, side) for top in (0, (h - side) // 2, h - side)]


def _five(top: int, left: int, side: int, size: int) -> list[tuple[int, int, int]]:
    """The four corner and the centre ``size`` crops of the square (top, left, side)."""
    far, mid = side - size, round((side - size) / 2)
    offsets = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    return [(top + dy, left + dx, size) for dy, dx in offsets]


def crop_boxes(layout: str, h: int, w: int, size: int) -> list[tuple[int, int, int]]:
    """The square boxes (top, left, side) a crop layout takes from an (h, w) image; a box
    whose side is not ``size`` is resized to it."""
    if layout == "center":
        return [(round((h - size) / 2), round((w - size) / 2), size)]
    if layout == "ten":
        far_h, far_w = h - size, w - size
        return [(0, 0, size), (0, far_w, size), (far_h, 0, size), (far_h, far_w, size),
                (round(far_h / 2), round(far_w / 2), size)]
    if layout == "grid5":
        tops = [round(i * (h - size) / 4) for i in range(5)]
        lefts = [round(j * (w - size) / 4) for j in range(5)]
        return [(t, left, size) for t in tops for left in lefts]
    if layout == "googlenet":
        return [box for sq in _squares(h, w) for box in (*_five(*sq, size), sq)]
    raise ValueError(layout)


class _ProtocolView:
    """What every protocol view shares: no random draw, views over the whole image (no
    region decoding), and JPEG decoding allowed down to a scale that still covers the
    largest shorter side. Same interface as the evaluation transform
    (:class:`cnntrain.data.transforms.EvalTransform`)."""

    def __init__(self, protocol: Protocol, size: int, scales: list[int]) -> None:
        self.protocol, self.size, self.scales = protocol, size, scales

    def draw(self, h: int, w: int, generator: torch.Generator | None = None) -> EvalView:
        return EVAL_VIEW

    def max_reduction(self, h: int, w: int, view: EvalView) -> float:
        return min(h, w) / max(self.scales)

    def region(self, view: EvalView) -> None:
        return None

    def support(self, view: EvalView, hw: tuple[int, int]) -> None:
        return None  # the views cover the whole image

    def apply(self, img: torch.Tensor, view: EvalView = EVAL_VIEW,
              src_hw: tuple[int, int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(img)


class CropViews(_ProtocolView):
    """A crop protocol's views of a uint8 (C, H, W) image: for each scale, the image with
    its shorter side resized to it, the layout's boxes (resized to the crop when larger),
    and their mirrors; stacked (V, C, size, size)."""

    @property
    def views(self) -> int:
        per_scale = {"center": 1, "ten": 5, "grid5": 25, "googlenet": 18}[self.protocol.layout]
        return per_scale * len(self.scales) * (2 if self.protocol.flips else 1)

    def apply(self, img: torch.Tensor, view: EvalView = EVAL_VIEW,
              src_hw: tuple[int, int] | None = None) -> torch.Tensor:
        out = []
        for side in self.scales:
            scaled = resize_shorter(img, side)
            for top, left, box in crop_boxes(self.protocol.layout, *scaled.shape[-2:], self.size):
                crop = scaled[..., top:top + box, left:left + box]
                if box != self.size:
                    crop = TF.resize(crop, [self.size, self.size], antialias=True)
                out.append(crop)
                if self.protocol.flips:
                    out.append(TF.horizontal_flip(crop))
        return torch.stack([v.contiguous() for v in out])


class WholeImage(_ProtocolView):
    """A dense protocol's input: the whole image, unresized (the engine rescales it to each
    Q on the device). JPEGs may be decoded at a reduced scale that still covers the
    largest Q."""

    @property
    def views(self) -> int:
        return len(self.scales) * (2 if self.protocol.flips else 1)

    def distinct(self, h: int, w: int) -> int:
        """Views that differ for an (h, w) image: scales that round to the same size coincide."""
        sizes = {shorter_side_size(h, w, max(q, self.size)) for q in self.scales}
        return len(sizes) * (2 if self.protocol.flips else 1)

    def apply(self, img: torch.Tensor, view: EvalView = EVAL_VIEW,
              src_hw: tuple[int, int] | None = None) -> torch.Tensor:
        return img.contiguous()


def protocol_transform(protocol: Protocol, size: int, scales: list[int]) -> CropViews | WholeImage:
    return (WholeImage if protocol.dense else CropViews)(protocol, size, scales)


def describe_protocols() -> str:
    """``cnntrain eval --protocol list``: each preset, its paper and what it does."""
    width = max(map(len, PROTOCOLS)) + 2
    lines = []
    for p in PROTOCOLS.values():
        lines.append(f"{p.name:<{width}}{p.paper}")
        lines.append(f"{'':<{width}}{p.what}")
    return "\n".join(lines)
