"""ImageNet-style folders: ``ROOT/train/CLASS/*`` and ``ROOT/val/CLASS/*``.

The class list is the sorted names of ``train/``'s sub-folders; ``val/`` must not hold a
class that ``train/`` lacks. Every non-hidden file is a sample: JPEG, PNG, GIF and WebP
decode with libjpeg-turbo/libpng through ``torchvision.io``, anything else through
Pillow; CMYK, grey, palette, RGBA and 16-bit images all come out as 8-bit RGB. A file
that cannot be decoded becomes a :class:`Skipped` marker that the loader counts and
reports instead of crashing a worker.

Before any decoder sees a file, its header's pixel count is checked against
``data.max_pixels`` (JPEG from its start-of-frame, every other format through Pillow's
lazy open, which reads the header only): a decompression bomb, a PNG declaring 40,000 x
40,000 pixels with a few bytes of data, is skipped like any bad file, without allocating
its pixels and without reaching libpng, which can crash on such files. Each loader worker
also notes the file it is decoding (:mod:`cnntrain.data.inflight`), so a worker killed
inside a native decoder is reported with that file's name.

Training views of JPEGs are drawn from the header before decoding, so a view that
shrinks the image enough is decoded at a reduced scale (:mod:`cnntrain.data.fastjpeg`).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from cnntrain.data import fastjpeg, inflight
from cnntrain.data.imagenet_val import flat_samples
from cnntrain.data.sampler import sample_key
from cnntrain.data.transforms import scaled_box
from cnntrain.errors import CnnTrainError, first_line

_NATIVE = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"RIFF")


def skip_reason(exc: BaseException) -> str:
    """Why a file was skipped, in one line: the error's type and first line, without the
    object addresses decoders put in it (``<_io.BytesIO object at 0x7f...>``)."""
    line = first_line(exc)
    return f"{type(exc).__name__}: {'no message' if line == type(exc).__name__ else line}"


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be read."""

    path: str
    reason: str


def list_classes(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every non-hidden file under ``folder`` (symlinks followed), in sorted order: what
    training reads, `data check` inspects and `predict` labels."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return found


def scan_split(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        found = image_files(class_dir)
        if not found:
            raise CnnTrainError(
                f"class folder {class_dir} is empty; put its images there or remove the folder"
            )
        samples += [(path, index) for path in found]
    return samples


PILLOW_MAX_PIXELS = 89_478_485  # Image.MAX_IMAGE_PIXELS, the recipe's default data.max_pixels


class TooLarge(ValueError):
    """An image whose header declares more pixels than the limit."""


def header_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) from an image's header, without decoding; None when no reader
    recognises it (the decoder then gives its verdict)."""
    size = fastjpeg.jpeg_size(raw)
    if size is not None:
        return size
    # Pillow's own bomb check would answer for us on open; data.max_pixels decides here.
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(raw)) as im:  # lazy: parses the header only
            return im.height, im.width
    except Exception:  # noqa: BLE001 - unrecognised or damaged header: the decoder decides
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_pixels(raw: bytes, max_pixels: int) -> None:
    size = header_size(raw)
    if size is not None and size[0] * size[1] > max_pixels:
        raise TooLarge(f"header declares {size[1]} x {size[0]} = {size[0] * size[1]:,} pixels, over "
                       f"data.max_pixels = {max_pixels:,}; not decoded")


def read_image(path: str, max_pixels: int = PILLOW_MAX_PIXELS) -> torch.Tensor:
    """Decode any image file to uint8 RGB (3, H, W); raises on unreadable data and on
    images over ``max_pixels``."""
    with open(path, "rb") as fh:
        raw = fh.read()
    check_pixels(raw, max_pixels)
    return decode_bytes(raw)


def decode_bytes(raw: bytes) -> torch.Tensor:
    """Decode an image file's bytes to uint8 RGB (3, H, W); raises on unreadable data."""
    if not raw:
        raise ValueError("empty file")
    if raw[:4].startswith(_NATIVE):
        try:
            img = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if img.dtype == torch.uint16:
                img = (img.to(torch.int32) >> 8).to(torch.uint8)
            return img
        except RuntimeError:
            pass  # let Pillow try; it reports truncation and odd variants clearly
    return _read_with_pil(raw)


def _read_with_pil(raw: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.int64)
            scale = 65535 if arr.max() > 255 else 255
            grey = (arr * 255 // scale).astype(np.uint8)
            return torch.from_numpy(np.repeat(grey[None], 3, axis=0).copy())
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Composite on white (what a viewer shows) rather than dropping alpha to black.
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        rgb = im.convert("RGB")
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())


def decode_view(raw: bytes, transform, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decode ``raw`` and apply ``transform`` (a Train- or EvalTransform). A JPEG's view is
    drawn from its header first, so that only the view's region is decoded, at 1/2, 1/4 or
    1/8 scale when the view allows (see :mod:`fastjpeg`). The view is whatever
    ``transform.draw`` returns (a :class:`~cnntrain.data.views.View`, or the evaluation's
    empty one), handed back to the transform's ``max_reduction``, ``region``, ``support``
    and ``apply``."""
    size = fastjpeg.jpeg_size(raw)
    if size is None or not hasattr(transform, "draw"):
        img = decode_bytes(raw)
        return transform(img, generator) if transform is not None else img
    view = transform.draw(*size, generator)
    reduction = fastjpeg.reduction_for(transform.max_reduction(*size, view))
    img = _decode_fast(raw, size, reduction, transform, view)
    if img is not None:
        return img
    img = fastjpeg.channels_last(decode_bytes(raw))
    if tuple(img.shape[-2:]) != size:
        size = tuple(img.shape[-2:])  # the header lied; the view was drawn for another size
        view = transform.draw(*size, generator)
    return transform.apply(img, view, size)


def _decode_fast(raw: bytes, size: tuple[int, int], reduction: int, transform, view):
    """The view from a region and/or reduced-scale decode, or None when the file needs the
    full decoder's verdict (damaged, truncated, CMYK, ...)."""
    try:
        if fastjpeg.has_region_decoder():
            scaled = fastjpeg.scaled_size(size, reduction)
            box = transform.region(view)
            if box is not None:
                box = scaled_box(box, size, scaled)
                img = fastjpeg.decode_region(raw, box, reduction)
                return transform.apply(img, transform.on_region(view, box[2:]))
            support = transform.support(view, scaled)
            if support is not None and support[2] * support[3] < scaled[0] * scaled[1]:
                img = fastjpeg.decode_into_frame(raw, support, scaled, reduction)
            elif reduction > 1:
                img = fastjpeg.decode_region(raw, None, reduction)
            else:
                return None  # a whole image at full size: torchvision decodes it as fast
        elif reduction > 1:
            img = fastjpeg.decode_reduced(raw, size, reduction)
        else:
            return None
    except Exception:  # noqa: BLE001 - let the full decoder give the verdict on this file
        return None
    return transform.apply(img, view, size)


class ImageFolderDataset(Dataset):
    """Samples of an ImageNet-style folder; keys are indices or (index, augmentation seed)."""

    def __init__(self, samples: list[tuple[str, int]], transform=None, max_pixels: int = PILLOW_MAX_PIXELS) -> None:
        self.samples, self.transform, self.max_pixels = samples, transform, max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, generator = sample_key(key)
        path, label = self.samples[index]
        inflight.note(path)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            check_pixels(raw, self.max_pixels)
            img = self.load(path, raw, generator)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, not a crash
            return Skipped(path, skip_reason(exc)), label
        return img, label

    def load(self, path: str, raw: bytes, generator: torch.Generator | None):
        """A checked file's bytes -> the sample (here: its decoded training view)."""
        return decode_view(raw, self.transform, generator)


def load_folder(root: Path, val_labels: str = "") -> dict:
    """{'classes': [...], 'train': samples, 'val': samples} for an ImageNet-style root.
    With ``val_labels`` (``data.val_labels``), ``val/`` is ImageNet's flat folder read
    in place through that label file."""
    train_dir, val_dir = root / "train", root / "val"
    classes = list_classes(train_dir)
    if not classes:
        raise CnnTrainError(f"{train_dir} holds no class folders; expected {train_dir}/CLASS/IMAGE files")
    out = {"classes": classes, "train": scan_split(train_dir, classes), "val": []}
    if val_labels:
        out["val"] = flat_samples(val_dir, val_labels, classes)
    elif val_dir.is_dir():
        extra = sorted(set(list_classes(val_dir)) - set(classes))
        if extra:
            raise CnnTrainError(
                f"{val_dir} has classes that {train_dir} lacks: {', '.join(extra[:5])}"
                f"{' ...' if len(extra) > 5 else ''}; val/ and train/ must share their class folders"
            )
        out["val"] = scan_split(val_dir, classes)
    return out
