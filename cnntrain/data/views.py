"""Random training views of uint8 (C, H, W) images: one policy per ``augment.crop``.

The crop policies (:data:`CROPS`):
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

After these, the later papers' per-image policies, from torchvision.transforms.v2 on the
uint8 view (:class:`Policies`): ``augment.auto`` (RandAugment, Cubuk et al. 2020;
TrivialAugment, Müller & Hutter 2021; AutoAugment's ImageNet policy, Cubuk et al. 2019)
and ``augment.random_erasing`` (Zhong et al. 2020: one box, filled with the dataset's
mean colour, which is 0 after normalisation, as torchvision's reference recipe erases
after normalising). torchvision draws them from torch's global RNG; they run with it
forked and seeded from the sample's own generator, so they stay a function of (seed,
epoch, position) like the rest of the view.

Progressive resizing (:func:`progressive_size`, FFCV's ResNet runs): the training side
of an epoch, rising linearly between two epochs, set on the transform before the
epoch's loader workers start (:meth:`TrainTransform.set_size`).

A view's random draws need only the image size and come out as a :class:`View`, so a
JPEG reader can draw it from the header and decode just what the view needs
(:func:`cnntrain.data.folder.decode_view`). Draws come in a fixed order: the crop's, then
the flip's, then the colour jitter's, then the policies' seed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from cnntrain.data.fastjpeg import dense_like
from cnntrain.data.transforms import (_randint, center_crop, color_jitter, crop_support, draw_color_jitter,
                                      random_resized_params, resize_shorter, scaled_box, shorter_side_size)
from cnntrain.recipe import AugmentSection, DataSection


@dataclass(frozen=True)
class View:
    """One random training view, drawn from the image size alone (:meth:`TrainTransform.draw`).

    ``top`` and ``left`` place the crop: in the source image for ``resized``, whose box is
    ``height`` x ``width`` source pixels; otherwise in the image resized to shorter side
    ``side`` (``random``, ``scale_jitter``) or padded (``pad``). ``jitter`` is the (order,
    factors) of :func:`color_jitter`, or None; ``policy_seed`` seeds :class:`Policies`."""

    top: int = 0
    left: int = 0
    height: int = 0
    width: int = 0
    side: int = 0
    flip: bool = False
    jitter: tuple[tuple[int, ...], tuple[float, ...]] | None = None
    policy_seed: int | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.height, self.width


class NoCrop:
    """``none``: the evaluation view, nothing drawn. The base of the crop policies: each
    draws its part of a :class:`View` and applies it; ``region``, ``support`` and
    ``on_region`` are explained on :class:`TrainTransform`."""

    def __init__(self, size: int, eval_resize: int, aug: AugmentSection) -> None:
        self.size, self.eval_resize, self.aug = size, eval_resize, aug

    def draw(self, h: int, w: int, generator: torch.Generator | None) -> View:
        return View()

    def max_reduction(self, h: int, w: int, view: View) -> float:
        return min(h, w) / max(self.eval_resize, self.size)

    def region(self, view: View) -> tuple[int, int, int, int] | None:
        return None

    def support(self, view: View, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        return None

    def on_region(self, view: View, region_hw: tuple[int, int]) -> View:
        return view

    def apply(self, img: torch.Tensor, view: View, src_hw: tuple[int, int] | None) -> torch.Tensor:
        return center_crop(resize_shorter(img, self.eval_resize), self.size)

    def resident_base(self) -> tuple[int, int] | None:
        """For device-resident data (:mod:`cnntrain.data.resident`), which prepares every
        image once: (the shorter side it is resized to before the centre ``size`` crop,
        the zero padding the random crop offsets range over). None where the view has no
        such fixed base (a per-image resize)."""
        return self.eval_resize, 0


class PadCrop(NoCrop):
    """``pad``: the image at ``train_size``, zero-padded by ``augment.pad``, cropped at random."""

    def draw(self, h: int, w: int, generator: torch.Generator | None) -> View:
        span = 2 * self.aug.pad + 1
        return View(top=_randint(span, generator), left=_randint(span, generator))

    def max_reduction(self, h: int, w: int, view: View) -> float:
        return min(h, w) / self.size

    def resident_base(self) -> tuple[int, int] | None:
        return self.size, self.aug.pad

    def apply(self, img: torch.Tensor, view: View, src_hw: tuple[int, int] | None) -> torch.Tensor:
        size = self.size
        img = TF.pad(center_crop(resize_shorter(img, size), size), [self.aug.pad])
        return img[..., view.top:view.top + size, view.left:view.left + size]


class RandomCrop(NoCrop):
    """``random``: shorter side resized to ``augment.resize``, then a random crop."""

    def side(self, generator: torch.Generator | None) -> int:
        return max(self.aug.resize, self.size)

    def resident_base(self) -> tuple[int, int] | None:
        return None  # resized per image

    def draw(self, h: int, w: int, generator: torch.Generator | None) -> View:
        side = self.side(generator)
        rh, rw = shorter_side_size(h, w, side)
        top = _randint(rh - self.size + 1, generator)
        return View(top=top, left=_randint(rw - self.size + 1, generator), side=side)

    def max_reduction(self, h: int, w: int, view: View) -> float:
        return min(h, w) / view.side

    def support(self, view: View, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        h, w = hw
        rh, rw = shorter_side_size(h, w, view.side)
        size = self.size
        return crop_support(h, w, (rh, rw), min(view.top, rh - size), min(view.left, rw - size), size)

    def apply(self, img: torch.Tensor, view: View, src_hw: tuple[int, int] | None) -> torch.Tensor:
        size = self.size
        img = resize_shorter(img, view.side)
        h, w = img.shape[-2:]
        top, left = min(view.top, h - size), min(view.left, w - size)  # a reduced decode may round down
        return img[..., top:top + size, left:left + size]


class ScaleJitterCrop(RandomCrop):
    """``scale_jitter``: a random crop after resizing the shorter side to S, an integer drawn
    uniformly from ``augment.scale_range``."""

    def side(self, generator: torch.Generator | None) -> int:
        lo, hi = (max(s, self.size) for s in self.aug.scale_range)
        return lo + _randint(hi - lo + 1, generator)


class ResizedCrop(NoCrop):
    """``resized``: a box of random area and aspect ratio, resized to ``train_size``. It
    resizes just its box, so decoding only that box (:meth:`region`) gives the same view."""

    def draw(self, h: int, w: int, generator: torch.Generator | None) -> View:
        top, left, height, width = random_resized_params(h, w, self.aug.scale, self.aug.ratio, generator)
        return View(top=top, left=left, height=height, width=width)

    def max_reduction(self, h: int, w: int, view: View) -> float:
        return min(view.height, view.width) / self.size

    def resident_base(self) -> tuple[int, int] | None:
        return None  # a box of random size, resized per image

    def region(self, view: View) -> tuple[int, int, int, int] | None:
        return view.box

    def on_region(self, view: View, region_hw: tuple[int, int]) -> View:
        return replace(view, top=0, left=0, height=region_hw[0], width=region_hw[1])

    def apply(self, img: torch.Tensor, view: View, src_hw: tuple[int, int] | None) -> torch.Tensor:
        hw = tuple(img.shape[-2:])
        top, left, h, w = scaled_box(view.box, src_hw or hw, hw)
        return TF.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)


class Policies:
    """``augment.auto`` and ``augment.random_erasing`` on a uint8 (C, H, W) view, as
    torchvision's v2 transforms do them (bilinear interpolation, as torchvision's
    reference recipe passes), with torch's global RNG forked and seeded per sample."""

    def __init__(self, aug: AugmentSection, fill: tuple[int, ...] | None = None) -> None:
        bilinear = T.InterpolationMode.BILINEAR
        steps: list[T.Transform] = []
        if aug.auto == "randaugment":
            steps.append(T.RandAugment(aug.auto_ops, aug.auto_magnitude, interpolation=bilinear))
        elif aug.auto == "trivialaugment":
            steps.append(T.TrivialAugmentWide(interpolation=bilinear))
        elif aug.auto == "autoaugment":
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=bilinear))
        if aug.random_erasing > 0:
            steps.append(T.RandomErasing(aug.random_erasing, value=list(fill) if fill else 0))
        self.transform = T.Compose(steps) if steps else None

    def __call__(self, img: torch.Tensor, seed: int | None) -> torch.Tensor:
        if seed is None:
            return self.transform(img)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img)


def progressive_size(data: DataSection, epoch: int) -> int:
    """The training side of 0-based ``epoch``: ``data.progressive`` [start, end] reached
    linearly between ``data.progressive_epochs`` [first, last], rounded to a multiple of
    ``data.progressive_multiple`` (FFCV's ``get_resolution``); ``train_size`` when off."""
    if not data.progressive:
        return data.train_size
    (lo, hi), (first, last) = data.progressive, data.progressive_epochs
    frac = 1.0 if epoch >= last else max(0.0, (epoch - first) / max(1, last - first))
    step = data.progressive_multiple
    return max(step, int(round((lo + frac * (hi - lo)) / step)) * step)


CROPS: dict[str, type[NoCrop]] = {
    "none": NoCrop, "pad": PadCrop, "random": RandomCrop, "resized": ResizedCrop, "scale_jitter": ScaleJitterCrop,
}


class TrainTransform:
    """Random training view of a uint8 (C, H, W) image: the crop policy that
    ``augment.crop`` names (:data:`CROPS`, chosen once here), then the flip and colour
    jitter shared by all of them.

    The random draws (``draw``) need only the image size, so a JPEG reader can draw them
    from the header, decode at a reduced scale when the view allows it (``max_reduction``)
    and then ``apply`` them; ``__call__`` is ``apply(img, draw(h, w))``. Draws take an
    optional generator, so a sample's view can be a function of (seed, epoch, index).
    """

    def __init__(self, data: DataSection, augment: AugmentSection, fill: tuple[int, ...] | None = None) -> None:
        self.size = data.train_size
        self.eval_resize = data.eval_resize or data.train_size
        self.aug = augment
        self.crop = CROPS[augment.crop](self.size, self.eval_resize, augment)
        self.policies = Policies(augment, fill)

    def set_fill(self, fill: tuple[int, ...]) -> None:
        """Erase to ``fill`` (the dataset's mean colour, known once the data is read)."""
        self.policies = Policies(self.aug, fill)

    def set_size(self, size: int) -> None:
        """Train at ``size`` from now on (progressive resizing; before the loader's workers start)."""
        self.size = self.crop.size = size

    def draw(self, h: int, w: int, generator: torch.Generator | None = None) -> View:
        """The crop's draws, then the flip's, the colour jitter's, the policies' seed (in that order)."""
        view = self.crop.draw(h, w, generator)
        flip = bool(self.aug.hflip and torch.rand((), generator=generator) < 0.5)
        jitter = None
        if any(self.aug.color_jitter):
            order, factors = draw_color_jitter(self.aug.color_jitter, generator)
            jitter = (tuple(order), tuple(factors))
        seed = None
        if self.policies.transform is not None and generator is not None:
            seed = int(torch.randint(0, 2**62, (), generator=generator))
        return replace(view, flip=flip, jitter=jitter, policy_seed=seed)

    def max_reduction(self, h: int, w: int, view: View) -> float:
        """How many times smaller than (h, w) the image may be decoded for this view
        without any upsampling that the full-size image would not have needed."""
        return self.crop.max_reduction(h, w, view)

    def region(self, view: View) -> tuple[int, int, int, int] | None:
        """The box (top, left, height, width) of the source image that ``view`` reads,
        when decoding only that box gives the same view (a random-resized crop resizes
        just its box); None when the view needs the whole image (resizing the whole image
        first, as the other crops do, filters across the crop's edges)."""
        return self.crop.region(view)

    def support(self, view: View, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """For views that resize the whole (h, w) image and then crop it: the box of the
        image that the crop's pixels depend on (the resize filter's reach included), or
        None. The view of an image that holds the right pixels inside this box, whatever
        lies outside, is the view of the whole image."""
        return self.crop.support(view, hw)

    def on_region(self, view: View, region_hw: tuple[int, int]) -> View:
        """``view`` for an image that is just the :meth:`region` (of size ``region_hw``)."""
        return self.crop.on_region(view, region_hw)

    def apply(self, img: torch.Tensor, view: View, src_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """The view ``view`` (drawn for an image of size ``src_hw``, default: img's own)."""
        out = self.crop.apply(img, view, src_hw)
        if view.flip:
            out = TF.horizontal_flip(out)
        if view.jitter is not None:
            out = color_jitter(out, *view.jitter)
        if self.policies.transform is not None:
            out = self.policies(out, view.policy_seed)
        return dense_like(out, img)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(img, self.draw(*img.shape[-2:], generator))
