"""GPU JPEG decoding (data.decode): the batch decoder's views equal the CPU path's for
the same draws (run on CPU here, where decode_jpeg is libjpeg-turbo), the per-file
fallback (PNG in the worker, a refused JPEG on the CPU, an unreadable file skipped and
listed), the data.decode checks; on CUDA, parity with the CPU decode within a tolerance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.data import build_data, fastjpeg, gpudecode
from cnntrain.data.folder import Skipped, decode_bytes
from cnntrain.data.sampler import EpochSampler
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import load_recipe
from tests.conftest import write_image_folder

RECIPE = ["data.train_size=16", "data.eval_resize=20", "augment.crop=resized", "augment.hflip=true"]


def odd_folder(root: Path) -> Path:
    write_image_folder(root, size=(40, 30))  # jpg and png files
    cls = root / "train" / "cat"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "CMYK").save(cls / "cmyk.jpg")
    good = (cls / "img0.jpg").read_bytes()
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 3])  # a JPEG header, then nothing
    return root


def batch_of(folder_root: Path, device: str):
    recipe = load_recipe("resnet18", RECIPE)
    bundle = build_data(recipe, str(folder_root))
    encoded = gpudecode.EncodedFolder(bundle.train)
    sampler = EpochSampler(len(encoded), seed=5)
    keys = list(sampler)
    batch = gpudecode.collate_encoded([encoded[k] for k in keys])
    decoder = gpudecode.BatchDecoder(bundle.train.transform, torch.device(device))
    return bundle, keys, encoded, decoder(*batch)


def cpu_reference(bundle, key):
    """The CPU path's view of a sample, decoding it whole (the region decoder is exact
    but may also decode at a reduced scale, which the GPU path does not)."""
    index, seed = key
    path, label = bundle.train.samples[index]
    raw = Path(path).read_bytes()
    img = fastjpeg.channels_last(decode_bytes(raw))
    tf = bundle.train.transform
    return tf.apply(img, tf.draw(*img.shape[-2:], torch.Generator().manual_seed(seed))), label


def test_batch_decoder_equals_the_cpu_path_and_falls_back_per_file(tmp_path):
    bundle, keys, encoded, (images, labels, skipped) = batch_of(odd_folder(tmp_path / "f"), "cpu")
    kinds = [type(encoded[k][0]).__name__ for k in keys]
    assert "Encoded" in kinds and "Tensor" in kinds  # JPEGs left encoded, PNGs decoded in the worker
    assert [Path(s.path).name for s in skipped] == ["truncated.jpg"] and isinstance(skipped[0], Skipped)
    good = [k for k in keys if not bundle.train.samples[k[0]][0].endswith("truncated.jpg")]
    assert images.shape == (len(good), 3, 16, 16) and images.dtype == torch.uint8
    for i, key in enumerate(good):
        ref, label = cpu_reference(bundle, key)
        assert torch.equal(images[i], ref.contiguous()), bundle.train.samples[key[0]][0]
        assert int(labels[i]) == label


def test_a_file_the_device_decoder_refuses_is_decoded_on_cpu(tmp_path, monkeypatch):
    bundle, keys, encoded, (reference, _, _) = batch_of(odd_folder(tmp_path / "f"), "cpu")
    real = gpudecode.decode_jpeg

    def refuses_cmyk(data, **kw):  # nvJPEG refuses CMYK; libjpeg-turbo reads it
        files = data if isinstance(data, list) else [data]
        if any(len(d) == len((tmp_path / "f/train/cat/cmyk.jpg").read_bytes()) for d in files):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(gpudecode, "decode_jpeg", refuses_cmyk)
    *_, (images, _, skipped) = batch_of(tmp_path / "f", "cpu")
    assert torch.equal(images, reference) and len(skipped) == 1


def test_data_decode_choices(folder_root, cifar10_root):
    cpu = torch.device("cpu")
    folder = build_data(load_recipe("resnet18"), str(folder_root)).train
    assert not gpudecode.use_gpu_decode(load_recipe("resnet18"), folder, cpu)  # auto: CPU decodes on CPU
    with pytest.raises(CnnTrainError, match="needs a CUDA device"):
        gpudecode.use_gpu_decode(load_recipe("resnet18", ["data.decode=gpu"]), folder, cpu)
    with pytest.raises(CnnTrainError, match="data.decode"):
        load_recipe("resnet18", ["data.decode=nvjpeg"])


@pytest.mark.cuda
def test_gpu_decode_matches_the_cpu_decode_within_tolerance(tmp_path):
    bundle, keys, encoded, (images, labels, skipped) = batch_of(odd_folder(tmp_path / "f"), "cuda")
    assert images.is_cuda and len(skipped) == 1
    good = [k for k in keys if not bundle.train.samples[k[0]][0].endswith("truncated.jpg")]
    for i, key in enumerate(good):
        ref, _ = cpu_reference(bundle, key)
        diff = (images[i].cpu().float() - ref.float()).abs()
        assert diff.mean() < 3 and diff.max() <= 64, (bundle.train.samples[key[0]][0], diff.mean(), diff.max())


def test_gpu_decode_workers_keep_the_folders_pixel_cap(tmp_path):
    from tests.test_reliability import png_bomb

    root = tmp_path / "data"
    write_image_folder(root, size=(40, 30))
    png_bomb(root / "train" / "cat" / "bomb.png")
    recipe = load_recipe("resnet18", RECIPE)
    bundle = build_data(recipe, str(root))
    encoded = gpudecode.EncodedFolder(bundle.train)
    index = next(i for i, (path, _) in enumerate(encoded.samples) if path.endswith("bomb.png"))
    item, _ = encoded[index]
    assert isinstance(item, Skipped) and "pixels" in item.reason
