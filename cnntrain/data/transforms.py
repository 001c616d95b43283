"""Image transforms on uint8 tensors, and the float preparation done on the device.

Samples stay uint8 (C, H, W) from decoding through crop, resize and flip, so workers
move a quarter of the bytes float32 would need (JPEGs are decoded and kept in
height-width-channel memory order, which the uint8 resize is fastest on and which a
channels_last model wants anyway); conversion to float, AlexNet's PCA
lighting and the per-dataset normalisation run on whole batches on the training device
(:class:`BatchPrep`).

Training views (a crop policy per ``augment.crop``, the papers they follow, flip and
colour jitter) are in :mod:`cnntrain.data.views`, built from the helpers here.

Evaluation: resize the shorter side to ``data.eval_resize`` (0: to ``train_size``), centre
crop ``data.eval_size`` (0: ``train_size``; larger for train-low/test-high, Touvron et al.
2019); with 10 crops, the four corners and centre and their mirror images.
With ``eval.scales`` (Simonyan & Zisserman 2015 §3.2/4.2, multi-scale evaluation), the same
views are taken at every test scale Q (shorter side resized to Q) and stacked, so the
evaluator averages the softmax over all scales and crops (multi-crop, not dense).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from cnntrain.data.fastjpeg import dense_like
from cnntrain.recipe import DataSection

# Krizhevsky et al. 2012 §4.1: principal components of ImageNet RGB pixel values (0-1 scale).
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])


def shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size`` (torchvision's rounding)."""
    if min(h, w) == size:
        return h, w
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize_support(in_size: int, out_size: int, start: int, stop: int, margin: int = 2) -> tuple[int, int]:
    """The source indices [first, last) that output indices [start, stop) of an
    antialiased bilinear resize from ``in_size`` to ``out_size`` read, as torch computes
    its filter windows (centre ``scale * (i + 0.5)``, half-width ``max(scale, 1)``), widened
    by ``margin`` against rounding."""
    scale = in_size / out_size
    half = max(scale, 1.0)
    first = int(scale * (start + 0.5) - half + 0.5) - margin
    last = int(scale * (stop - 0.5) + half + 0.5) + margin
    return max(first, 0), min(last, in_size)


def crop_support(h: int, w: int, resized_hw: tuple[int, int], top: int, left: int,
                 size: int) -> tuple[int, int, int, int]:
    """The box (top, left, height, width) of an (h, w) image that a ``size`` crop at (top,
    left) of the image resized to ``resized_hw`` depends on."""
    y0, y1 = resize_support(h, resized_hw[0], top, top + size)
    x0, x1 = resize_support(w, resized_hw[1], left, left + size)
    return y0, x0, y1 - y0, x1 - x0


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


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(0, high, (), generator=generator).item())


def random_crop(img: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = img.shape[-2:]
    top = _randint(h - size + 1, generator)
    left = _randint(w - size + 1, generator)
    return img[..., top:top + size, left:left + size]


def random_resized_params(h: int, w: int, scale: list[float], ratio: list[float],
                          generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A crop box (top, left, height, width) as Inception's data augmentation draws it."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=generator)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = _randint(h - ch + 1, generator)
            left = _randint(w - cw + 1, generator)
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


def scaled_box(box: tuple[int, int, int, int], src_hw: tuple[int, int],
                img_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box drawn on the ``src_hw`` image, in the coordinates of the same image decoded
    at a reduced size ``img_hw`` (a JPEG decoded at 1/2, 1/4 or 1/8 scale)."""
    if src_hw == img_hw:
        return box
    top, left, h, w = box
    sy, sx = img_hw[0] / src_hw[0], img_hw[1] / src_hw[1]
    t, l = min(int(round(top * sy)), img_hw[0] - 1), min(int(round(left * sx)), img_hw[1] - 1)
    return t, l, max(1, min(int(round(h * sy)), img_hw[0] - t)), max(1, min(int(round(w * sx)), img_hw[1] - l))


def draw_color_jitter(strength: list[float], generator: torch.Generator | None = None) -> tuple[list, list]:
    """A random order of (brightness, contrast, saturation) and factors uniform in [1-x, 1+x]."""
    order = torch.randperm(3, generator=generator).tolist()
    factors = [1 - x + 2 * x * float(torch.rand((), generator=generator)) for x in strength]
    return order, factors


def random_color_jitter(img: torch.Tensor, strength: list[float],
                        generator: torch.Generator | None = None) -> torch.Tensor:
    return color_jitter(img, *draw_color_jitter(strength, generator))


def color_jitter(img: torch.Tensor, order: list[int], factors: list[float]) -> torch.Tensor:
    """Brightness, contrast and saturation of a uint8 (C, H, W) image scaled by ``factors``,
    applied in ``order`` (GoogLeNet's photometric distortions; factors drawn in ``draw``)."""
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for i in order:
        if factors[i] != 1.0 and (i < 2 or img.shape[0] == 3):
            img = ops[i](img, factors[i])
    return img


@dataclass(frozen=True)
class EvalView:
    """An evaluation transform's view: nothing is drawn, so every image's is this empty
    one (the counterpart of :class:`~cnntrain.data.views.View` for the same protocol:
    ``draw``, ``support``, ``apply``)."""


EVAL_VIEW = EvalView()


class EvalTransform:
    """Deterministic evaluation view: one centre crop, or 10 crops stacked (10, C, H, W);
    with ``scales``, those views at every scale, stacked (len(scales) * crops, C, H, W)."""

    def __init__(self, data: DataSection, crops: int = 1, scales: list[int] | None = None,
                 flip: bool = False) -> None:
        self.size = data.eval_size or data.train_size
        self.resize = data.eval_resize or self.size
        self.crops = crops
        self.scales = list(scales or [])
        self.flip = flip and crops == 1  # 10 crops hold the mirrors already

    def _views(self, img: torch.Tensor, side: int) -> list[torch.Tensor]:
        img = resize_shorter(img, max(side, self.size))
        if self.crops == 10:
            return list(TF.ten_crop(img, [self.size, self.size]))
        view = center_crop(img, self.size).contiguous()
        return [view, TF.horizontal_flip(view)] if self.flip else [view]

    def draw(self, h: int, w: int, generator: torch.Generator | None = None) -> EvalView:
        """Nothing random: the empty view (the protocol of :class:`~cnntrain.data.views.TrainTransform`)."""
        return EVAL_VIEW

    def max_reduction(self, h: int, w: int, view: EvalView) -> float:
        return min(h, w) / max([self.resize, self.size, *self.scales])

    def region(self, view: EvalView) -> None:
        return None  # the shorter side is resized before the crop: see support()

    def support(self, view: EvalView, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """The part of the image one centre crop depends on (see views.TrainTransform.support);
        None for 10 crops or several scales, which need all of it."""
        if self.crops != 1 or self.scales or self.flip:
            return None
        h, w = hw
        side = max(self.resize, self.size)
        rh, rw = shorter_side_size(h, w, side)
        # TF.center_crop's offsets: round((rh - size) / 2)
        top, left = int(round((rh - self.size) / 2.0)), int(round((rw - self.size) / 2.0))
        return crop_support(h, w, (rh, rw), top, left, self.size)

    def apply(self, img: torch.Tensor, view: EvalView = EVAL_VIEW,
              src_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """One centre crop, or a (V, C, H, W) stack: 10 crops, and/or one view set per test scale."""
        source = img
        if self.scales:
            return torch.stack([v for s in self.scales for v in self._views(img, s)])
        views = self._views(img, self.resize)
        return torch.stack(views) if len(views) > 1 else dense_like(views[0], source)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(img)


@functools.lru_cache(maxsize=None)
def _eigen_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet eigenvectors and eigenvalues on ``device``, copied there once (a
    copy per batch would wait for the GPU's queued work)."""
    return IMAGENET_EIGVEC.to(device), IMAGENET_EIGVAL.to(device)


def pca_lighting(batch: torch.Tensor, std: float, generator: torch.Generator | None = None,
                 value_scale: float = 1.0) -> torch.Tensor:
    """AlexNet's colour augmentation on a float batch (N, 3, H, W) of values in
    [0, ``value_scale``]: add ``eigvec @ (alpha * eigval)`` (times ``value_scale``) per
    image, alpha ~ N(0, std), to every pixel."""
    if std <= 0 or batch.shape[1] != 3:
        return batch
    # Drawn where the batch is (a generator, when given, says where): no host-to-device
    # copy, no synchronisation on a GPU; on the CPU the same draws as ever.
    device = generator.device if generator is not None else batch.device
    alpha = torch.randn(batch.shape[0], 3, generator=generator, device=device) * std
    vec, val = _eigen_on(device)
    shift = (alpha * val) @ vec.T * value_scale  # (N, 3): sum_j eigvec[:, j] * alpha_j * eigval_j
    return batch + shift.to(batch.device, batch.dtype)[:, :, None, None]


class BatchPrep:
    """uint8 batch on the host -> normalised float batch on the device.

    The memory-format change happens on the uint8 batch (a quarter of the bytes), and
    conversion and normalisation are one multiply-add from uint8 to float, so the float
    batch is written once.

    On CPU the float batch is written into a buffer kept from the previous call of the
    same shape (a result is valid until the next call): a fresh 38 MiB batch per step
    meant fresh pages, and page faults cost 10 to 190 ms a batch in the VMs measured here,
    more than the conversion itself. A stale result still held by an autograd graph is
    caught by autograd's in-place check, not used silently. CUDA's caching allocator
    already reuses memory, so there every call returns a new tensor.
    """

    MAX_BUFFERS = 4  # distinct batch shapes (last batch, accumulation chunks, eval crops)

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False, lighting: float = 0.0, reuse: bool | None = None) -> None:
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.mean, self.std = mean_t, std_t
        self.scale, self.shift = 1 / std_t, -mean_t / std_t  # (x - mean) / std = x * scale + shift
        self.device = device
        self.channels_last = channels_last
        self.lighting = lighting
        self.reuse = device.type == "cpu" if reuse is None else reuse
        self._buffers: dict[tuple, torch.Tensor] = {}

    def _output(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.reuse:
            return None
        key = (tuple(x.shape), x.stride())
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= self.MAX_BUFFERS:
                self._buffers.clear()
            buf = torch.empty_strided(x.shape, x.stride(), dtype=torch.float32, device=x.device)
            self._buffers[key] = buf
        return buf

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if x.ndim == 5:  # (N, crops, C, H, W)
            x = x.flatten(0, 1)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        if train and self.lighting > 0:
            x = pca_lighting(x.float(), self.lighting, value_scale=255.0)
        out = self._output(x)
        if out is None:  # one pass: uint8 in, float out (type promotion), memory format kept
            return torch.addcmul(self.shift, x, self.scale)
        # On CPU a mixed-dtype op first copies its uint8 input to a float temporary (fresh
        # pages again); converting into the buffer and normalising in place avoids it.
        out.copy_(x)
        return torch.addcmul(self.shift, out, self.scale, out=out)
