"""JPEG decoding for the training pipeline: read the size from the header, draw the
random view, then decode only what that view needs.

Two savings, both exact or nearly so:
- **the crop's region only** (``decode_region``, when cnntrain's compiled decoder
  ``_jpegcrop`` is built): for a view that reads a box of the image (Inception's
  random-resized crop), libjpeg-turbo inverse-transforms, upsamples and colour-converts
  only the box's columns and rows, and stops decoding after its last row. Its pixels are
  those of a full decode (tested bit for bit).
- **a reduced scale**: libjpeg-turbo can decode at 1/2, 1/4 or 1/8 of the size by running
  smaller inverse DCTs. That is used only when the view then still shrinks the image,
  never enlarges it: the crop box (or the resized image) must keep at least the output's
  size at the reduced scale, so the result is the full-size pipeline's up to resampling.

Without the compiled decoder (no libjpeg headers where cnntrain was installed), JPEGs are
decoded whole by libjpeg-turbo through ``torchvision.io.decode_jpeg``, and at a reduced
scale through Pillow's ``Image.draft``.

Crop, resize and flip then run on uint8 tensors laid out channels-last (height, width,
channels in memory), which is what torch's SIMD uint8 antialiased resize is fastest on.
"""
from __future__ import annotations

import io

import numpy as np
import torch

try:  # built from _jpegcrop.c at install time where libjpeg's headers are present
    from cnntrain.data import _jpegcrop
except ImportError:  # pragma: no cover - depends on the build machine
    _jpegcrop = None

# Start-of-frame markers that carry the image size (not DHT 0xC4, JPG 0xC8, DAC 0xCC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD9)])


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG from its start-of-frame header, or None if ``raw`` is not
    a JPEG whose header can be read."""
    n = len(raw)
    if n < 4 or raw[0] != 0xFF or raw[1] != 0xD8:
        return None
    i = 2
    while i + 3 < n:
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in _SOF:
            if i + 9 > n:
                return None
            h = (raw[i + 5] << 8) | raw[i + 6]
            w = (raw[i + 7] << 8) | raw[i + 8]
            return (h, w) if h and w else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + ((raw[i + 2] << 8) | raw[i + 3])
    return None


def reduction_for(max_reduction: float) -> int:
    """The largest of 8, 4, 2, 1 not above ``max_reduction``."""
    for r in (8, 4, 2):
        if max_reduction >= r:
            return r
    return 1


def decoder() -> str:
    """Which JPEG decoder the training pipeline uses, in words."""
    if _jpegcrop is not None:
        return f"cnntrain region decoder ({_jpegcrop.version()})"
    return "torchvision decode_jpeg, whole images (cnntrain's region decoder is not built)"


def has_region_decoder() -> bool:
    return _jpegcrop is not None


def scaled_size(size: tuple[int, int], reduction: int) -> tuple[int, int]:
    """(height, width) of an image of ``size`` decoded at 1/``reduction`` scale (libjpeg
    rounds up)."""
    return -(-size[0] // reduction), -(-size[1] // reduction)


def decode_region(raw: bytes, box: tuple[int, int, int, int] | None, reduction: int = 1) -> torch.Tensor:
    """The pixels of ``box`` (top, left, height, width, in the coordinates of the image at
    1/``reduction`` scale; None: all of it), decoded by the region decoder: uint8
    (3, h, w) in height-width-channel memory. Raises ValueError on damaged data, and on
    a file that does not end where a JPEG ends (the region decoder stops after the box, so
    it would not notice a truncation below it); the caller then lets a full decoder judge.
    """
    if _jpegcrop is None:
        raise RuntimeError("cnntrain's region decoder is not built")
    if not raw.endswith(b"\xff\xd9"):
        raise ValueError("no end-of-image marker: truncated, or data after the image")
    top, left, h, w = box if box is not None else (0, 0, 0, 0)
    pixels, h, w = _jpegcrop.decode(raw, top, left, h, w, reduction)
    return torch.frombuffer(pixels, dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)


def decode_into_frame(raw: bytes, box: tuple[int, int, int, int], hw: tuple[int, int],
                      reduction: int = 1) -> torch.Tensor:
    """An (3, h, w) image (``hw``: the size at 1/``reduction`` scale) in which only ``box``
    is decoded; the rest is left unset. For views whose pixels depend on that box alone
    but whose geometry is the whole image's (resize the whole image, then crop)."""
    top, left, h, w = box
    region = decode_region(raw, box, reduction)
    frame = torch.empty((*hw, 3), dtype=torch.uint8)
    frame[top:top + h, left:left + w] = region.permute(1, 2, 0)
    return frame.permute(2, 0, 1)


def decode_reduced(raw: bytes, size: tuple[int, int], reduction: int) -> torch.Tensor:
    """Decode at 1/``reduction`` scale in the DCT domain: uint8 (3, h, w), channels-last memory."""
    from PIL import Image

    h, w = size
    with Image.open(io.BytesIO(raw)) as im:
        # draft() picks the largest power-of-two scale that keeps at least this size.
        im.draft("RGB", (max(1, w // reduction), max(1, h // reduction)))
        arr = np.array(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1)


def is_hwc(img: torch.Tensor) -> bool:
    """Whether a (C, H, W) tensor is dense with height-width-channel memory order."""
    c, h, w = img.shape
    return img.stride() == (1, w * c, c)


def channels_last(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 with dense height-width-channel memory (a copy unless already so)."""
    if is_hwc(img):
        return img
    return img.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def dense_like(img: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``img`` made dense in the memory order of ``source`` (HWC when the source was
    decoded HWC, so that no sample is reordered on the way to the batch)."""
    if img.dim() == 3 and source.dim() == 3 and source.stride(0) == 1:
        return channels_last(img)
    return img.contiguous()
