"""Which GPU each piece picks, checked without one: DataParallel's device ids and its
autocast wrapper (``--strategy dp``), the one-visible-GPU rank device, and the current
device and cuDNN/cuBLAS settings prepare_cuda makes (torch.cuda stubbed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnntrain.engine import distributed
from cnntrain.engine.dataparallel import AutocastForward
from cnntrain.engine.device import prepare_cuda
from cnntrain.engine.distributed import SINGLE, DistEnv
from cnntrain.errors import CnnTrainError


@pytest.fixture
def gpus(monkeypatch):
    """Pretend CUDA is here with ``count`` GPUs (set it on the returned dict)."""
    seen = {"count": 4, "set_device": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: seen["count"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen["set_device"].append(torch.device(d)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    return seen


class FakeDataParallel(nn.Module):
    def __init__(self, module, device_ids=None, output_device=None):
        super().__init__()
        self.module, self.device_ids, self.output_device = module, device_ids, output_device


def test_dataparallel_is_led_by_the_runs_gpu_and_autocasts_with_its_dtype(gpus, monkeypatch):
    monkeypatch.setattr(nn, "DataParallel", FakeDataParallel)
    model = nn.Linear(2, 2)
    dp = distributed.wrap_model(model, SINGLE, torch.device("cuda", 2), "dp", amp_dtype=torch.bfloat16)
    assert dp.device_ids == [2, 0, 1, 3] and dp.output_device == 2
    assert isinstance(dp.module, AutocastForward) and dp.module.dtype == torch.bfloat16 and dp.module.module is model
    fp32 = distributed.wrap_model(model, SINGLE, torch.device("cuda", 0), "dp", amp_dtype=None)
    assert fp32.device_ids == [0, 1, 2, 3] and fp32.output_device == 0 and fp32.module.dtype is None


def test_a_rank_with_one_visible_gpu_uses_it(gpus):
    gpus["count"] = 1  # SLURM: each task sees its own GPU as cuda:0
    assert distributed._rank_device("cuda", DistEnv(1, 2, 1, 2)) == torch.device("cuda", 0)
    gpus["count"] = 2
    assert distributed._rank_device("cuda", DistEnv(1, 2, 1, 2)) == torch.device("cuda", 1)
    assert distributed._rank_device("auto", DistEnv(1, 2, 1, 2)) == torch.device("cuda", 1)
    with pytest.raises(CnnTrainError, match="local rank 3 has no GPU"):
        distributed._rank_device("auto", DistEnv(3, 4, 3, 4))
    with pytest.raises(CnnTrainError, match="picks one GPU"):
        distributed._rank_device("cuda:1", DistEnv(0, 2, 0, 2))


def test_prepare_cuda_makes_the_runs_gpu_current_and_tunes_by_purpose(gpus):
    before = torch.get_float32_matmul_precision()
    try:
        prepare_cuda(torch.device("cuda", 3), False, fixed_shapes=True, training=True)  # fit
        assert gpus["set_device"] == [torch.device("cuda", 3)]
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
        prepare_cuda(torch.device("cuda", 1), False, fixed_shapes=False)  # dense evaluation
        assert gpus["set_device"][-1] == torch.device("cuda", 1)
        assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
        prepare_cuda(torch.device("cuda", 1), False, fixed_shapes=True)  # eval: autotuned, no TF32
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)
