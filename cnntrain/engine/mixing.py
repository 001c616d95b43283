"""Batch mixing on the training device: mixup (Zhang et al. 2018) and CutMix (Yun et al.
2019), as ``augment.mixup`` / ``augment.cutmix`` (Beta alpha), ``augment.mix_prob`` (the
share of batches mixed) and ``augment.mix_switch_prob`` (with both on, the share of
mixed batches that use CutMix rather than mixup: timm's rule, which "ResNet strikes back"
and torchvision's recipe use).

The mixing itself is torchvision.transforms.v2's ``MixUp`` and ``CutMix`` (each image
paired with its neighbour in the batch, the targets mixed by the same lambda, CutMix's
lambda corrected to the box's true area). They draw from torch's global CPU RNG; here
the draws run with it forked and seeded from (run seed, step, micro-batch, rank), so
they are a pure function of the step: a resumed run mixes exactly as the uninterrupted
one did without any state in the checkpoint, and each process mixes its own batch
differently. The batch is mixed after normalisation (mixing commutes with the affine
normalisation), on whatever device it is on.

The targets come back as class probabilities (N, C); training accuracy is counted
against each row's dominant label, their arg-max (:func:`dominant`), and the run says so:
the epoch line reads "train top1 (dominant label)" and metrics.jsonl records
``"train_top1_target": "dominant"`` (:func:`mixes`).
"""
from __future__ import annotations

import torch
import torchvision.transforms.v2 as T

from cnntrain.recipe import AugmentSection


def dominant(target: torch.Tensor) -> torch.Tensor:
    """Class indices of mixed (N, C) targets: the label with the larger share."""
    return target.argmax(dim=1) if target.ndim == 2 else target


def mixes(aug: AugmentSection) -> bool:
    """Whether the recipe mixes any batch (mixup or CutMix on, and drawn at all)."""
    return (aug.mixup > 0 or aug.cutmix > 0) and aug.mix_prob > 0


class BatchMix:
    """``(images, labels, step, part) -> (images, probabilities)``, or the inputs unchanged
    when neither mixup nor cutmix is on (``enabled`` False) or the batch was not drawn to mix."""

    def __init__(self, aug: AugmentSection, num_classes: int, seed: int = 0, rank: int = 0) -> None:
        self.mixup = T.MixUp(alpha=aug.mixup, num_classes=num_classes) if aug.mixup > 0 else None
        self.cutmix = T.CutMix(alpha=aug.cutmix, num_classes=num_classes) if aug.cutmix > 0 else None
        self.prob, self.switch = aug.mix_prob, aug.mix_switch_prob
        self.num_classes, self.seed, self.rank = num_classes, seed, rank
        self.enabled = mixes(aug)

    def draw_seed(self, step: int, part: int) -> int:
        return (((self.seed * 1_000_003 + step) * 1_009 + part) * 1_013 + self.rank) % (2**63)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int = 0,
                 part: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            return images, labels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.draw_seed(step, part))
            if float(torch.rand(())) >= self.prob:
                return images, labels
            use_cutmix = self.mixup is None or (self.cutmix is not None and float(torch.rand(())) < self.switch)
            return (self.cutmix if use_cutmix else self.mixup)(images, labels)
