"""Image transforms on uint8 tensors, and the float preparation done on the device.

Samples stay uint8 (C, H, W) from decoding through crop, resize and flip, so workers
move a quarter of the bytes float32 would need; conversion to float, AlexNet's PCA
lighting and the per-dataset normalisation run on whole batches on the training device
(:class:`BatchPrep`).

Training crops (``augment.crop``):
- ``pad``: zero-pad by ``augment.pad`` and take a random ``train_size`` crop (He et al.
  2016 §4.2 on CIFAR: 4 pixels, 32x32 crop);
- ``random``: resize the shorter side to ``augment.resize``, random ``train_size`` crop
  (Krizhevsky et al. 2012: 224 crops of 256 images);
- ``resized``: a crop of random area in ``augment.scale`` and aspect ratio in
  ``augment.ratio``, resized to ``train_size`` (Szegedy et al. 2015);
- ``scale_jitter``: resize the shorter side to S drawn uniformly from the integers in
  ``augment.scale_range``, random ``train_size`` crop (Simonyan & Zisserman 2015 §3.1:
  S in [256, 512]; He et al. 2016 §3.4: [256, 480]);
- ``none``: the evaluation view.
Then a horizontal flip (``augment.hflip``) and photometric distortion
(``augment.color_jitter``: brightness, contrast, saturation factors drawn uniformly from
[1-x, 1+x], applied in a random order on uint8, as Szegedy et al. 2015 §6 / Howard 2013).
Evaluation: resize the shorter side to ``data.eval_resize`` (0: to ``train_size``), centre
crop ``train_size``; with 10 crops, the four corners and centre and their mirror images.
With ``eval.scales`` (Simonyan & Zisserman 2015 §3.2/4.2, multi-scale evaluation), the same
views are taken at every test scale Q (shorter side resized to Q) and stacked, so the
evaluator averages the softmax over all scales and crops (multi-crop, not dense).
"""
from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from cnntrain.recipe import AugmentSection, DataSection

# Krizhevsky et al. 2012 §4.1: principal components of ImageNet RGB pixel values (0-1 scale).
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])


def resize_shorter(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if min(h, w) == size:
        return img
    return TF.resize(img, [size], antialias=True)


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    return TF.center_crop(img, [size, size])


def random_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    top = int(torch.randint(0, h - size + 1, ()).item())
    left = int(torch.randint(0, w - size + 1, ()).item())
    return img[..., top:top + size, left:left + size]


def random_resized_params(h: int, w: int, scale: list[float], ratio: list[float]) -> tuple[int, int, int, int]:
    """A crop box (top, left, height, width) as Inception's data augmentation draws it."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, ()).item())
            left = int(torch.randint(0, w - cw + 1, ()).item())
            return top, left, ch, cw
    # Fallback: the largest centred crop within the ratio range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class TrainTransform:
    """Random training view of a uint8 (C, H, W) image."""

    def __init__(self, data: DataSection, augment: AugmentSection) -> None:
        self.size = data.train_size
        self.eval_resize = data.eval_resize or data.train_size
        self.aug = augment

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        size, aug = self.size, self.aug
        if aug.crop == "resized":
            top, left, h, w = random_resized_params(*img.shape[-2:], aug.scale, aug.ratio)
            img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        elif aug.crop == "random":
            img = random_crop(resize_shorter(img, max(aug.resize, size)), size)
        elif aug.crop == "scale_jitter":
            lo, hi = aug.scale_range
            side = int(torch.randint(max(lo, size), max(hi, size) + 1, ()).item())
            img = random_crop(resize_shorter(img, side), size)
        elif aug.crop == "pad":
            img = center_crop(resize_shorter(img, size), size)
            img = random_crop(TF.pad(img, [aug.pad]), size)
        else:
            img = center_crop(resize_shorter(img, self.eval_resize), size)
        if aug.hflip and torch.rand(()) < 0.5:
            img = TF.horizontal_flip(img)
        if any(aug.color_jitter):
            img = color_jitter(img, aug.color_jitter)
        return img.contiguous()


def color_jitter(img: torch.Tensor, strength: list[float]) -> torch.Tensor:
    """Random brightness, contrast and saturation of a uint8 (C, H, W) image, in random order;
    each factor uniform in [1-x, 1+x] (x = 0 leaves that property alone)."""
    ops = [(TF.adjust_brightness, strength[0]), (TF.adjust_contrast, strength[1])]
    if img.shape[0] == 3:
        ops.append((TF.adjust_saturation, strength[2]))
    for i in torch.randperm(len(ops)).tolist():
        fn, x = ops[i]
        if x > 0:
            img = fn(img, float(torch.empty(()).uniform_(1 - x, 1 + x)))
    return img


class EvalTransform:
    """Deterministic evaluation view: one centre crop, or 10 crops stacked (10, C, H, W);
    with ``scales``, those views at every scale, stacked (len(scales) * crops, C, H, W)."""

    def __init__(self, data: DataSection, crops: int = 1, scales: list[int] | None = None) -> None:
        self.size = data.train_size
        self.resize = data.eval_resize or data.train_size
        self.crops = crops
        self.scales = list(scales or [])

    def _views(self, img: torch.Tensor, side: int) -> list[torch.Tensor]:
        img = resize_shorter(img, max(side, self.size))
        if self.crops == 10:
            return list(TF.ten_crop(img, [self.size, self.size]))
        return [center_crop(img, self.size).contiguous()]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.scales:
            return torch.stack([v for s in self.scales for v in self._views(img, s)])
        views = self._views(img, self.resize)
        return torch.stack(views) if self.crops == 10 else views[0]


def pca_lighting(batch: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """AlexNet's colour augmentation on a float batch in [0, 1] (N, 3, H, W): add
    ``eigvec @ (alpha * eigval)`` per image, alpha ~ N(0, std), to every pixel."""
    if std <= 0 or batch.shape[1] != 3:
        return batch
    alpha = torch.randn(batch.shape[0], 3, generator=generator) * std
    vec, val = IMAGENET_EIGVEC, IMAGENET_EIGVAL
    shift = (alpha * val) @ vec.T  # (N, 3): sum_j eigvec[:, j] * alpha_j * eigval_j
    return batch + shift.to(batch.device, batch.dtype)[:, :, None, None]


class BatchPrep:
    """uint8 batch on the host -> normalised float batch on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False, lighting: float = 0.0) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.device = device
        self.channels_last = channels_last
        self.lighting = lighting

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        crops = x.shape[1] if x.ndim == 5 else 0
        if crops:
            x = x.flatten(0, 1)
        x = x.float()
        if train and self.lighting > 0:
            x = pca_lighting(x / 255, self.lighting) * 255
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
