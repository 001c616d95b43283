"""``--strategy dp``: torch.nn.DataParallel in one process over every visible GPU, with
autocast where the replicas run and any GPU as the lead."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnntrain.errors import CnnTrainError


class AutocastForward(nn.Module):
    """Runs ``module`` under autocast with the run's dtype. DataParallel's replicas run in
    threads of their own, and autocast's dtype is thread-local: torch's ``parallel_apply``
    re-enters autocast there without a dtype (fp16 on CUDA), so a bf16 run would train in
    fp16 with no grad scaler. Inside the replicated module, the dtype is the run's."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: torch.Tensor) -> Any:
        if self.dtype is None:
            return self.module(x)
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.module(x)


def data_parallel(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> nn.DataParallel:
    """DataParallel over every visible GPU, led by ``device`` (its outputs and the
    optimiser's parameters live there), so ``--device cuda:N`` works for any N."""
    if device.type != "cuda":
        raise CnnTrainError("--strategy dp (DataParallel) needs CUDA GPUs")
    lead = device.index or 0
    ids = [lead] + [i for i in range(torch.cuda.device_count()) if i != lead]
    return nn.DataParallel(AutocastForward(model, amp_dtype), device_ids=ids, output_device=lead)
