"""Device-resident training data: small datasets held as uint8 on the training device,
each batch indexed, cropped and flipped there in a few whole-batch tensor ops, with no
loader workers (``data.on_device``).

=============================================================================== evidence
What it is for: CIFAR-10's 50,000 training images are 150 MiB as uint8, so they fit on
any GPU, and building a batch there is a gather, not 128 Python calls in worker
processes. airbench (Jordan 2024, github.com/KellerJordan/cifar10-airbench) keeps CIFAR-10
on the GPU this way and reaches 94% in under 4 s on one A100.
Measured here (2 shared CPU cores, no GPU; BENCHMARKS.md, "bench data on CIFAR"):
    OMP_NUM_THREADS=1 cnntrain bench data --data CIFAR_ROOT \
        --batch-size 128 --batches 50 --repeats 3
against torchvision's CIFAR10 + RandomCrop(32, padding=4) + RandomHorizontalFlip +
ToTensor + Normalize in a DataLoader with 2 workers, both ending with the normalised float
batch: 27,882 vs 2,253 images/s, 12.4x (2026-12-01, load average 11 on 2 cores; 10.7x to
13.9x over three runs). With torch's default 2 intra-op threads: 145,163 vs 7,825
images/s, 18.6x, in a few seconds when the cores were free; 0.9x to 3.5x at load 6 to 13,
where each of the main process's ops waits for a descheduled thread, which the
single-threaded loader workers of the baseline never do.
=============================================================================== design
1. Load: the readers' uint8 tensors (CIFAR, digits) or the synthetic images drawn once,
   brought to the view's fixed base once for all epochs, as the crop policy of
   :mod:`cnntrain.data.views` states it (``resident_base``: ``pad``, the image at
   ``train_size`` zero-padded by ``augment.pad``; ``none``, the evaluation view), and
   moved to the device.
2. Per epoch: the existing :class:`~cnntrain.data.sampler.EpochSampler` gives this rank's
   order and three uniforms per sample (``draws``), a pure function of (seed, epoch,
   position): exact resume (``set_epoch(epoch, start)``) and DDP sharding (every
   ``world``-th position of the padded permutation) are the per-sample path's.
3. Per batch: one advanced-indexing op takes each sample's crop at its (top, left) from
   the image or, where its flip is drawn, from the image's mirror (held beside it);
   normalisation (and PCA lighting) follow in the training step's
   :class:`~cnntrain.data.transforms.BatchPrep`, as for every loader.

Same distribution, other draws: the per-sample path draws a sample's view from a
generator seeded with its own seed (one generator per image, too slow for a batch of
512 on a GPU); here the crop offsets are ``floor(u * (2 * pad + 1))`` and the flip
``u < 0.5`` from the sampler's uniforms, the same uniform distributions. For the same
drawn view the two paths give identical pixels (tests/test_resident.py checks both).
Views that need a per-image resize (``random``, ``resized``, ``scale_jitter``) or colour
jitter stay on the per-sample path.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from cnntrain.data.digits import TensorImages
from cnntrain.data.sampler import EpochSampler
from cnntrain.data.synthetic import SyntheticImages
from cnntrain.data.transforms import center_crop, resize_shorter
from cnntrain.data.views import CROPS, NoCrop
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe

FREE_SHARE = 0.25  # auto: on when the padded (and mirrored) images take under this share of free memory
LOAD_CHUNK = 4096  # images resized per call while loading (bounds the float temporaries)


@dataclass(frozen=True)
class ResidentView:
    """The fixed part of the view (base size, padding) and what is drawn per sample."""

    size: int  # side of the training crop
    pad: int  # zero padding around the base image; crop offsets are drawn in [0, 2 * pad]
    hflip: bool
    side: int = 0  # shorter side each image is resized to before the centre crop to ``size``

    @property
    def span(self) -> int:
        return 2 * self.pad + 1


def why_not_resident(recipe: Recipe, dataset) -> str | None:
    """None when the training set can live on the device, else the reason it cannot."""
    aug = recipe.augment
    if not isinstance(dataset, (TensorImages, SyntheticImages)):
        return "only CIFAR, digits and synthetic data can be held on the device (a folder is read per file)"
    crop = _crop_reason(recipe)
    if crop is not None:
        return crop
    if any(aug.color_jitter):
        return "augment.color_jitter is drawn per image; device-resident data takes crop and flip only"
    return per_image_only(recipe)


def per_image_only(recipe: Recipe) -> str | None:
    """The views only the per-sample (loader worker) path applies, or None. Batch-wise
    paths (device-resident data, GPU decoding) crop, resize and flip; mixing happens after
    them in the training step, so it works with every path."""
    if recipe.augment.auto != "none" or recipe.augment.random_erasing:
        return "augment.auto and augment.random_erasing run per image in the loader workers"
    if recipe.data.progressive:
        return "progressive resizing changes each image's crop between epochs in the loader workers"
    return None


def resident_bytes(recipe: Recipe, dataset, channels: int) -> int:
    view = resident_view(recipe)
    side = view.size + 2 * view.pad
    return len(dataset) * channels * side * side * (2 if view.hflip else 1)  # with the mirror images


def use_resident(recipe: Recipe, dataset, channels: int, device: torch.device) -> bool:
    """``data.on_device``: off, on (an error when it cannot be), or auto (on when possible
    and the images take under :data:`FREE_SHARE` of the device's free memory)."""
    mode = recipe.data.on_device
    if mode == "off" or dataset is None:
        return False
    reason = why_not_resident(recipe, dataset)
    if reason is not None:
        if mode == "on":
            raise CnnTrainError(f'data.on_device = "on": {reason}; set data.on_device = "auto" or "off"')
        return False
    if mode == "on" or device.type != "cuda":
        return True  # on CPU the images are in memory already
    free, _total = torch.cuda.mem_get_info(device)
    return resident_bytes(recipe, dataset, channels) < FREE_SHARE * free


def crop_policy(recipe: Recipe, crop: str) -> NoCrop:
    """The training view's crop policy ``crop`` (views.CROPS) for this recipe's sizes."""
    data = recipe.data
    return CROPS[crop](data.train_size, data.eval_resize or data.train_size, recipe.augment)


def _crop_reason(recipe: Recipe) -> str | None:
    """Why the recipe's crop policy has no fixed base to hold on the device, or None."""
    crop = recipe.augment.crop
    if crop_policy(recipe, crop).resident_base() is not None:
        return None
    fixed = [name for name in CROPS if crop_policy(recipe, name).resident_base() is not None]
    how = ("resizes each image to its shorter side augment.resize before the crop" if crop == "random"
           else "resizes every image differently")
    return f'augment.crop = "{crop}" {how}; device-resident data needs one fixed base for all images and takes {" or ".join(fixed)}'


def resident_view(recipe: Recipe) -> ResidentView:
    """The fixed base and the draws, as the recipe's crop policy states them."""
    base = crop_policy(recipe, recipe.augment.crop).resident_base()
    if base is None:
        raise CnnTrainError(f'{_crop_reason(recipe)}; set data.on_device = "off"')
    side, pad = base
    return ResidentView(recipe.data.train_size, pad, recipe.augment.hflip, side)


def base_images(images: torch.Tensor, view: ResidentView) -> torch.Tensor:
    """The images at the view's fixed base: as the crop policy (``pad`` or ``none``)
    prepares every image before its random crop, for all of them at once."""
    parts = []
    for chunk in images.split(LOAD_CHUNK):
        chunk = center_crop(resize_shorter(chunk, view.side), view.size)
        parts.append(TF.pad(chunk, [view.pad]) if view.pad else chunk.contiguous())
    return torch.cat(parts)


def dataset_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All (uint8 images, labels) of an in-memory or synthetic dataset."""
    if isinstance(dataset, TensorImages):
        return dataset.images, dataset.labels
    plain = SyntheticImages(dataset.samples, dataset.num_classes, dataset.channels, dataset.size, dataset.seed)
    pairs = [plain[i] for i in range(len(plain))]  # each sample from its own seeded generator
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)


def crop_flip(windows: torch.Tensor, count: int, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              flip: torch.Tensor, span: int) -> torch.Tensor:
    """Image ``index[i]`` cropped at (top[i], left[i]), mirrored where ``flip[i]``: one
    indexing op for the whole batch, (B, C, size, size) uint8.

    ``windows`` is every crop of every image as a view (``unfold`` of the base images,
    followed by their mirror images when flips are drawn: ``count`` images each). The
    mirror of a crop at ``left`` is the crop of the mirrored image at ``span - 1 - left``,
    so a flip is a choice of source, not another pass over the batch (measured on CPU:
    one copy instead of the three of copy, flip and select)."""
    source = index + count * flip.long()
    left = torch.where(flip, span - 1 - left, left)
    return windows[source, :, top, left]


class ResidentBatches:
    """The training loader of device-resident data: yields (uint8 images on the device,
    labels on the device, no skipped files) batches in the sampler's order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, view: ResidentView, batch_size: int,
                 sampler: EpochSampler) -> None:
        """``images``: the base images (N, C, size + 2 pad, size + 2 pad) on the device."""
        self.count, self.labels, self.view = len(images), labels, view
        self.batch_size, self.sampler = batch_size, sampler
        self.device = images.device
        self.images = torch.cat([images, images.flip(-1)]) if view.hflip else images
        self.windows = self.images.unfold(2, view.size, 1).unfold(3, view.size, 1)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's remaining (indices, tops, lefts, flips) of the epoch, on the device."""
        s = self.sampler
        index, _seeds, u = s.draws(3)
        index, u = index[s.start:], u[s.start:]
        offsets = (u[:, :2] * self.view.span).long().clamp_(max=self.view.span - 1)
        flip = (u[:, 2] < 0.5) if self.view.hflip else torch.zeros(len(u), dtype=torch.bool)
        to = dict(device=self.device, non_blocking=True)
        return index.to(**to), offsets[:, 0].to(**to), offsets[:, 1].to(**to), flip.to(**to)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
        index, top, left, flip = self.epoch_draws()
        for i in range(0, len(index), self.batch_size):
            part = slice(i, i + self.batch_size)
            idx = index[part]
            images = crop_flip(self.windows, self.count, idx, top[part], left[part], flip[part], self.view.span)
            yield images, self.labels[idx], []


def resident_loader(recipe: Recipe, dataset, device: torch.device, batch_size: int, rank: int, world: int,
                    seed: int) -> ResidentBatches:
    """The training set on ``device`` and its batches, sharded and seeded as
    :func:`~cnntrain.data.loaders.train_loader` shards and seeds the per-sample path."""
    view = resident_view(recipe)
    images, labels = dataset_tensors(dataset)
    base = base_images(images, view).to(device)
    sampler = EpochSampler(len(labels), seed, rank=rank, world=world, repeats=recipe.train.repeated_aug)
    return ResidentBatches(base, labels.to(device), view, batch_size, sampler)
