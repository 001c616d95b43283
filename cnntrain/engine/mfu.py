"""Model FLOP utilisation for ``cnntrain bench train`` on CUDA: achieved FLOP/s (images/s
times the training FLOPs of one image) over the GPU's dense bf16 tensor-core peak.

Training FLOPs per image are 3x the forward pass's (the backward pass computes gradients
for both activations and weights, about twice the forward), and a forward
multiply-accumulate is 2 FLOPs; the forward count is :func:`cnntrain.summary.summarize`'s
(torch's FlopCounterMode on one image). The peak is named in the output, so a reader can
check it; a GPU not in :data:`BF16_DENSE_TFLOPS` gets no MFU unless
``CNNTRAIN_PEAK_TFLOPS`` gives its peak.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from cnntrain.summary import summarize

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, matched in order against
# torch.cuda.get_device_name(). Sources:
# - H100 SXM5: 989.4 (NVIDIA H100 datasheet, as tabulated at glennklockwood.com/garden/processors/h100,
#   "BF16 Matrix 989.4, Sparse 1978.9"); H200: the same GH100 compute with more HBM (same page).
# - H100 PCIe: 1,513 with sparsity, half without (NVIDIA's H100 specification table,
#   "Shown with sparsity. Specifications 1/2 lower without sparsity").
# - A100 (SXM4/PCIe): 312 dense, 624 with sparsity (NVIDIA A100 datasheet).
BF16_DENSE_TFLOPS: list[tuple[str, float, str]] = [
    ("H200", 989.4, "H200 (GH100, as H100 SXM5): 989.4 TFLOP/s dense bf16"),
    ("H100 PCIe", 756.5, "H100 PCIe: 756.5 TFLOP/s dense bf16"),
    ("H100", 989.4, "H100 SXM5: 989.4 TFLOP/s dense bf16"),
    ("A100", 312.0, "A100: 312 TFLOP/s dense bf16"),
]


def peak_bf16(device_name: str) -> tuple[float | None, str]:
    """(peak TFLOP/s, how it was named) for a GPU name; (None, why) when unknown."""
    given = os.environ.get("CNNTRAIN_PEAK_TFLOPS")
    if given:
        return float(given), f"CNNTRAIN_PEAK_TFLOPS = {given} TFLOP/s"
    for key, tflops, label in BF16_DENSE_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, label
    return None, f"no known bf16 peak for {device_name!r}; set CNNTRAIN_PEAK_TFLOPS"


def train_flops_per_image(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    """3 x 2 x the forward multiply-accumulates of one image."""
    return 6.0 * summarize(model, input_size).macs


def mfu(images_per_s: float, flops_per_image: float, device: torch.device) -> dict:
    """{'mfu', 'achieved_tflops', 'peak_tflops', 'peak'} for a CUDA device."""
    peak, label = peak_bf16(torch.cuda.get_device_name(device))
    achieved = images_per_s * flops_per_image / 1e12
    return {"achieved_tflops": achieved, "peak_tflops": peak, "peak": label,
            "mfu": achieved / peak if peak else None}
