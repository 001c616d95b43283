"""The fast input pipeline: header-first JPEG decoding (with DCT-domain reduction when the
view allows), per-sample augmentation seeds, shared-memory collation and the on-device
batch preparation give what the reference transforms give."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.data import BatchPrep, EpochSampler, make_loader
from cnntrain.data import fastjpeg
from cnntrain.data.digits import TensorImages
from cnntrain.data.folder import ImageFolderDataset, decode_bytes, decode_view
from cnntrain.data.transforms import EvalTransform
from cnntrain.data.views import TrainTransform
from cnntrain.recipe import AugmentSection, DataSection


def photo(w: int, h: int, seed: int = 0, **save) -> bytes:
    """A smooth, textured test picture as JPEG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 90 * np.sin(xx / w * (3 + c) + yy / h * (2 + c)) for c in range(3)], -1)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92, **save)
    return buf.getvalue()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_jpeg_size_reads_the_header():
    assert fastjpeg.jpeg_size(photo(120, 80)) == (80, 120)
    assert fastjpeg.jpeg_size(photo(64, 48, progressive=True)) == (48, 64)
    png = io.BytesIO()
    Image.new("RGB", (5, 5)).save(png, format="PNG")
    assert fastjpeg.jpeg_size(png.getvalue()) is None
    assert fastjpeg.jpeg_size(b"\xff\xd8garbage") is None
    assert fastjpeg.reduction_for(3.9) == 2 and fastjpeg.reduction_for(8.5) == 8 and fastjpeg.reduction_for(1.9) == 1


@pytest.mark.parametrize("crop", ["resized", "random", "none"])
def test_full_size_decode_gives_the_reference_view(crop):
    raw = photo(100, 75)
    tf = TrainTransform(DataSection(train_size=48, eval_resize=56),
                        AugmentSection(crop=crop, resize=56, hflip=True))
    reference_img = decode_bytes(raw)
    for seed in range(6):
        ref = tf(reference_img, gen(seed))
        fast = decode_view(raw, tf, gen(seed))
        assert fast.shape == ref.shape == (3, 48, 48)
        assert fast.dtype == torch.uint8 and fastjpeg.is_hwc(fast)  # kept in decode order
        # same random parameters; only the resampler's memory layout differs
        assert (fast.int() - ref.int()).abs().max() <= 1


@pytest.fixture(params=["region decoder", "pillow draft"])
def reductions(request, monkeypatch) -> list[int]:
    """The scale reductions the pipeline decodes at, with cnntrain's region decoder and
    without it (Pillow's draft mode); the list fills as JPEGs are decoded."""
    calls: list[int] = []
    if request.param == "region decoder":
        if not fastjpeg.has_region_decoder():
            pytest.skip("cnntrain's region decoder is not built here")
        real_region = fastjpeg.decode_region
        monkeypatch.setattr(fastjpeg, "decode_region", lambda raw, box, r=1: calls.append(r) or real_region(raw, box, r))
    else:
        monkeypatch.setattr(fastjpeg, "_jpegcrop", None)
    real = fastjpeg.decode_reduced
    monkeypatch.setattr(fastjpeg, "decode_reduced", lambda *a: calls.append(a[2]) or real(*a))
    return calls


def test_reduced_decode_when_the_view_allows(reductions):
    raw = photo(320, 240, seed=1)
    tf = TrainTransform(DataSection(train_size=24), AugmentSection(crop="resized", scale=[0.5, 1.0], hflip=True))
    reference_img = decode_bytes(raw)
    for seed in range(6):
        ref = tf(reference_img, gen(seed))
        fast = decode_view(raw, tf, gen(seed))
        assert fast.shape == ref.shape == (3, 24, 24)
        # the DCT-domain downscale is a different low-pass filter: close, not identical
        assert (fast.float() - ref.float()).abs().mean() < 6
    assert reductions and all(r >= 2 for r in reductions)
    # evaluation: shorter side 240 -> 32 allows 1/4 scale decoding; the centre crop matches
    ev = EvalTransform(DataSection(train_size=24, eval_resize=32))
    reductions.clear()
    fast, ref = decode_view(raw, ev), ev(reference_img)
    assert reductions == [4] and fast.shape == ref.shape
    assert (fast.float() - ref.float()).abs().mean() < 6


def test_no_reduction_when_it_would_enlarge(reductions):
    raw = photo(100, 75)
    tf = TrainTransform(DataSection(train_size=48), AugmentSection(crop="resized"))
    for seed in range(5):
        decode_view(raw, tf, gen(seed))
    assert all(r == 1 for r in reductions)  # full-scale region decodes only, if any


def test_views_depend_on_seed_epoch_and_index_only(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    samples = []
    for i in range(12):
        (folder / f"{i}.jpg").write_bytes(photo(40, 30, seed=i))
        samples.append((str(folder / f"{i}.jpg"), 0))
    tf = TrainTransform(DataSection(train_size=16), AugmentSection(crop="resized", hflip=True))
    ds = ImageFolderDataset(samples, tf)
    a, b = ds[(3, 987654321)], ds[(3, 987654321)]
    assert torch.equal(a[0], b[0])

    def batches(workers: int, epoch: int) -> list[torch.Tensor]:
        sampler = EpochSampler(len(ds), seed=5)
        sampler.set_epoch(epoch)
        loader = make_loader(ds, 4, workers=workers, sampler=sampler, persistent=True)
        return [x for x, _, _ in loader]

    in_process, two_workers = batches(0, 0), batches(2, 0)
    assert all(torch.equal(p, q) for p, q in zip(in_process, two_workers))
    assert two_workers[0].shape == (4, 3, 16, 16)
    assert two_workers[0].is_contiguous(memory_format=torch.channels_last)  # NHWC, as decoded
    assert not all(torch.equal(p, q) for p, q in zip(in_process, batches(0, 1)))


def test_sharded_sampler_covers_the_epoch_once():
    ds = TensorImages(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10))
    shards = [list(EpochSampler(len(ds), seed=1, world=2, rank=r)) for r in range(2)]
    indices = [i for s in shards for i, _ in s]
    assert sorted(indices) == list(range(10))
    assert [i for i, _ in EpochSampler(len(ds), seed=1)] != list(range(10))  # shuffled


def test_batch_prep_normalises_like_the_reference():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    plain = BatchPrep(mean, std, torch.device("cpu"))(images)
    cl = BatchPrep(mean, std, torch.device("cpu"), channels_last=True)(images)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cl, expected, atol=1e-5, rtol=1e-5)
    assert plain.is_contiguous() and cl.is_contiguous(memory_format=torch.channels_last)
    ten = torch.randint(0, 256, (2, 10, 3, 8, 8), dtype=torch.uint8)
    assert BatchPrep(mean, std, torch.device("cpu"))(ten).shape == (20, 3, 8, 8)
    floats = torch.rand(2, 3, 4, 4)
    before = floats.clone()
    BatchPrep(mean, std, torch.device("cpu"))(floats)
    assert torch.equal(floats, before)


def test_epoch_order_and_seeds_do_not_depend_on_history():
    ds = TensorImages(torch.zeros(9, 1, 4, 4, dtype=torch.uint8), torch.arange(9))
    walked = EpochSampler(len(ds), seed=2, world=2, rank=1)
    for epoch in range(3):
        walked.set_epoch(epoch)
        list(walked)
    fresh = EpochSampler(len(ds), seed=2, world=2, rank=1)
    fresh.set_epoch(2)
    assert list(walked) == list(fresh)  # what a run resumed at epoch 2 reads


def test_batch_prep_reuses_its_cpu_buffer_safely():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    prep = BatchPrep(mean, std, torch.device("cpu"), channels_last=True)
    fresh = BatchPrep(mean, std, torch.device("cpu"), channels_last=True, reuse=False)
    a_in = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    b_in = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    a = prep(a_in)
    torch.testing.assert_close(a, fresh(a_in), atol=0, rtol=0)
    pointer = a.data_ptr()
    b = prep(b_in)
    assert b.data_ptr() == pointer  # no new 38 MiB batch per step
    torch.testing.assert_close(b, fresh(b_in), atol=0, rtol=0)
    assert prep(b_in[:3]).shape == (3, 3, 8, 8)  # a last, smaller batch gets its own buffer
    # A result still needed by an autograd graph when the buffer is rewritten is an error,
    # never silently wrong gradients.
    conv = torch.nn.Conv2d(3, 2, 3)
    loss = conv(prep(a_in)).sum()
    prep(b_in)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_device_prefetch_is_the_loader_itself_off_cuda():
    from cnntrain.engine.device import ahead_to_device

    batches = [(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), [])]
    assert ahead_to_device(batches, torch.device("cpu")) is batches


@pytest.mark.cuda  # skipped off CUDA by conftest; `pytest -m cuda` (scripts/gpu-check) selects it
def test_device_prefetch_delivers_every_batch_on_the_gpu_in_order():
    from cnntrain.engine.device import ahead_to_device

    device = torch.device("cuda")
    host = [(torch.full((4, 3, 8, 8), i, dtype=torch.uint8).pin_memory(), torch.full((4,), i), [i])
            for i in range(5)]
    seen = list(ahead_to_device(host, device))
    assert len(seen) == 5
    for i, (images, target, skipped) in enumerate(seen):
        assert images.device.type == "cuda" and target.device.type == "cuda" and skipped == [i]
        assert int(images.float().mean()) == i and int(target[0]) == i
