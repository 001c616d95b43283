"""cnntrain's region decoder (cnntrain/data/_jpegcrop.c): the pixels of a box are those of
a full decode, at every scale and JPEG flavour; damaged files are refused, so that the
full decoder judges them; the pipeline decodes only the box a view depends on (the crop of
a random-resized crop; the resize filter's reach of a resize-then-crop view), with the
same result, and falls back cleanly without the decoder."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg

from cnntrain.data import fastjpeg
from cnntrain.data.folder import decode_bytes, decode_view
from cnntrain.data.transforms import EvalTransform, crop_support, shorter_side_size
from cnntrain.data.views import TrainTransform
from cnntrain.recipe import AugmentSection, DataSection

needs_decoder = pytest.mark.skipif(not fastjpeg.has_region_decoder(),
                                   reason="cnntrain's region decoder is not built here (no libjpeg headers)")


def jpeg(w: int, h: int, mode: str = "RGB", seed: int = 0, period: float = 7, noise: float = 12, **save) -> bytes:
    """Waves of ``period`` pixels plus noise; short periods and noise make every DCT
    coefficient matter, so a decoding difference would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / (period + 3 * c) + yy / (1.5 * period + c)) for c in range(3)], -1)
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


FLAVOURS = {
    "4:2:0": jpeg(203, 150),
    "4:2:2": jpeg(97, 131, subsampling=1),
    "4:4:4": jpeg(130, 97, subsampling=0),
    "progressive": jpeg(161, 119, progressive=True),
    "grey": jpeg(77, 123, mode="L"),
    "restart markers": jpeg(150, 100, restart_marker_rows=1),
}


def test_the_machines_like_ci_build_it():
    # Where libjpeg's headers are installed (this machine, CI), a missing decoder is a build bug.
    if Path("/usr/include/jpeglib.h").exists():
        assert fastjpeg.has_region_decoder(), "libjpeg headers are present but _jpegcrop was not built"
    assert "region decoder" in fastjpeg.decoder() or "not built" in fastjpeg.decoder()


@needs_decoder
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_whole_image_is_libjpeg_turbos_full_decode(flavour):
    raw = FLAVOURS[flavour]
    ours = fastjpeg.decode_region(raw, None)
    reference = decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
    assert ours.shape == reference.shape and fastjpeg.is_hwc(ours)
    assert torch.equal(ours, reference)


@needs_decoder
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_any_box_is_bit_identical_to_the_same_box_of_a_full_decode(flavour, reduction):
    raw = FLAVOURS[flavour]
    full = fastjpeg.decode_region(raw, None, reduction)
    h, w = full.shape[-2:]
    size = fastjpeg.jpeg_size(raw)
    assert (h, w) == fastjpeg.scaled_size(size, reduction)
    rng = np.random.default_rng(reduction)
    boxes = [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, 1, 1), (0, w - 1, h, 1)]
    for _ in range(25):
        bh, bw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        boxes.append((int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw))
    for top, left, bh, bw in boxes:
        part = fastjpeg.decode_region(raw, (top, left, bh, bw), reduction)
        assert part.shape == (3, bh, bw)
        assert torch.equal(part, full[:, top:top + bh, left:left + bw]), (top, left, bh, bw)


@needs_decoder
def test_damaged_or_unsupported_files_are_refused():
    raw = FLAVOURS["4:2:0"]
    with pytest.raises(ValueError, match="end-of-image"):
        fastjpeg.decode_region(raw[: len(raw) // 2], (0, 0, 10, 10))  # truncated below the box
    damaged = bytearray(raw)
    start = len(raw) // 3
    damaged[start:start + 40] = b"\xff\xd5" * 20  # restart markers where none belong
    with pytest.raises(ValueError, match="JPEG"):
        fastjpeg.decode_region(bytes(damaged), None)
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG")
    with pytest.raises(ValueError, match="JPEG"):
        fastjpeg.decode_region(buf.getvalue(), None)
    with pytest.raises(ValueError, match="outside"):
        fastjpeg.decode_region(raw, (140, 0, 20, 10))
    with pytest.raises(ValueError, match="reduction"):
        fastjpeg.decode_region(raw, None, 3)
    with pytest.raises(ValueError):
        fastjpeg.decode_region(b"\xff\xd8not a jpeg\xff\xd9", None)


def resized_crop_transform(size: int = 48, scale=(0.08, 1.0)) -> TrainTransform:
    return TrainTransform(DataSection(train_size=size), AugmentSection(crop="resized", scale=list(scale), hflip=True))


@needs_decoder
def test_random_resized_crops_decode_only_their_box(monkeypatch):
    raw = jpeg(320, 240, seed=3, period=40, noise=4)  # photo-like: little energy at the finest scales
    boxes = []
    real = fastjpeg.decode_region
    monkeypatch.setattr(fastjpeg, "decode_region", lambda r, box, red=1: boxes.append((box, red)) or real(r, box, red))
    tf = resized_crop_transform()
    reference_img = decode_bytes(raw)
    for seed in range(12):
        fast = decode_view(raw, tf, torch.Generator().manual_seed(seed))
        ref = tf(reference_img, torch.Generator().manual_seed(seed))
        assert fast.shape == ref.shape == (3, 48, 48) and fastjpeg.is_hwc(fast)
        _, reduction = boxes[-1]
        if reduction == 1:  # the same pixels resized the same way; only the memory layout differs
            assert (fast.int() - ref.int()).abs().max() <= 1
        else:  # the DCT-domain downscale is another low-pass filter: close, not identical
            assert (fast.float() - ref.float()).abs().mean() < 6
    assert len(boxes) == 12 and all(box is not None and box[2] * box[3] < 240 * 320 for box, _ in boxes[:3])


@pytest.mark.parametrize("fault", ["truncated", "cmyk"])
def test_files_the_region_decoder_refuses_go_to_the_full_decoder(fault):
    tf = resized_crop_transform(size=8)
    if fault == "truncated":
        raw = FLAVOURS["4:2:0"][:-300]
        with pytest.raises(Exception):
            decode_bytes(raw)  # the full decoder's verdict: unreadable
        with pytest.raises(Exception):
            decode_view(raw, tf, torch.Generator().manual_seed(0))
    else:
        buf = io.BytesIO()
        Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buf, format="JPEG")
        out = decode_view(buf.getvalue(), tf, torch.Generator().manual_seed(0))
        assert out.shape == (3, 8, 8)
        assert out[0].float().mean() > 200 and out[1].float().mean() < 50  # red, as Pillow converts it


def test_without_the_region_decoder_views_are_the_same(monkeypatch):
    raw = jpeg(200, 150, seed=5, period=40, noise=4)
    tf = resized_crop_transform(size=40, scale=(0.3, 1.0))
    with_decoder = [decode_view(raw, tf, torch.Generator().manual_seed(s)) for s in range(6)]
    monkeypatch.setattr(fastjpeg, "_jpegcrop", None)
    assert not fastjpeg.has_region_decoder() and "not built" in fastjpeg.decoder()
    without = [decode_view(raw, tf, torch.Generator().manual_seed(s)) for s in range(6)]
    for a, b in zip(with_decoder, without):
        assert a.shape == b.shape == (3, 40, 40)
        assert (a.float() - b.float()).abs().mean() < 6


def test_resize_support_holds_every_pixel_a_crop_depends_on():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        side, size = int(rng.integers(8, 260)), 8
        rh, rw = shorter_side_size(h, w, side)
        if min(rh, rw) < size:
            continue
        top, left = int(rng.integers(0, rh - size + 1)), int(rng.integers(0, rw - size + 1))
        img = torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)
        y0, x0, bh, bw = crop_support(h, w, (rh, rw), top, left, size)
        other = torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)
        other[:, y0:y0 + bh, x0:x0 + bw] = img[:, y0:y0 + bh, x0:x0 + bw]  # same inside, noise outside
        views = [TF.resize(x, [rh, rw], antialias=True)[:, top:top + size, left:left + size] for x in (img, other)]
        assert torch.equal(*views), (h, w, side, top, left)


@needs_decoder
@pytest.mark.parametrize("view", ["random", "scale_jitter", "eval"])
def test_resize_then_crop_views_decode_only_their_support_bit_identically(view, monkeypatch):
    if view == "eval":
        tf = EvalTransform(DataSection(train_size=64, eval_resize=72))
    else:
        tf = TrainTransform(DataSection(train_size=64), AugmentSection(crop=view, resize=72, scale_range=[72, 160],
                                                                       hflip=True))
    frames = []
    real = fastjpeg.decode_into_frame

    def noisy_frame(raw, box, hw, reduction=1):
        frames.append(box)
        img = real(raw, box, hw, reduction)
        top, left, h, w = box
        noise = torch.randint(0, 256, img.shape, dtype=torch.uint8)
        noise[:, top:top + h, left:left + w] = img[:, top:top + h, left:left + w]
        return fastjpeg.channels_last(noise)  # garbage outside the box must not matter

    for w, h in [(200, 150), (150, 200), (330, 250)]:
        raw = jpeg(w, h, seed=w)
        for seed in range(4):
            monkeypatch.setattr(fastjpeg, "decode_into_frame", noisy_frame)
            fast = decode_view(raw, tf, torch.Generator().manual_seed(seed))
            monkeypatch.setattr(fastjpeg, "_jpegcrop", None)  # torchvision's / Pillow's whole-image decode
            whole = decode_view(raw, tf, torch.Generator().manual_seed(seed))
            monkeypatch.undo()
            assert torch.equal(fast, whole), (view, w, h, seed)
    assert len(frames) == 12
