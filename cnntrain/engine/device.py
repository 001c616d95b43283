"""Device choice, mixed precision and channels_last policy, CPU process tuning, seeding
and RNG state.

``train.amp = "auto"`` turns on bf16 autocast on CUDA (fp16 with a grad scaler where bf16
is not supported) and stays fp32 on CPU. ``train.channels_last = "auto"`` is on for CUDA
and for CPU: every network here is a conv net, and on CPU channels_last measured faster
or equal for all of them (ResNet-20 1.3x, ResNet-18 1.2x, AlexNet and LeNet-5 equal;
see BENCHMARKS.md). The training step is the same code either way.

On CPU, :func:`tune_cpu_process` keeps freed large blocks in glibc's heap instead of
handing them back to the OS: each step allocates and frees the same large activation and
batch buffers, and fresh pages cost a page fault each (what jemalloc or tcmalloc, which
PyTorch's CPU tuning guide recommends, also avoid). No block is mmap'd at all, since
glibc caps the mmap threshold at 32 MiB and batches and activations exceed it.

On CUDA, :func:`ahead_to_device` copies the next batch to the GPU on a side stream while
the current one trains (batches are uint8, pinned by the loader).
"""
from __future__ import annotations

import ctypes
import os
import random
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from cnntrain.errors import CnnTrainError


def ahead_to_device(loader: Iterable, device: torch.device) -> Iterable:
    """``loader``'s (images, targets, skipped) batches, each copied to ``device`` while the
    previous one is in use. Off CUDA the loader itself (there is nothing to overlap)."""
    if device.type != "cuda":
        return loader
    return _CudaPrefetcher(loader, device)


class _CudaPrefetcher:
    """Copies batch i+1 host->GPU on a side stream while batch i trains on the current one.
    The consumer's stream waits for the copy before using a batch, and the batch's memory
    is marked as used by that stream, so the caching allocator cannot hand it out early."""

    def __init__(self, loader: Iterable, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        stream = torch.cuda.Stream(self.device)
        source = iter(self.loader)

        def copy_next():
            batch = next(source, None)
            if batch is None:
                return None
            images, target, skipped = batch
            with torch.cuda.stream(stream):
                return (images.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True),
                        skipped)

        upcoming = copy_next()
        while upcoming is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)
            images, target, skipped = upcoming
            images.record_stream(current)
            target.record_stream(current)
            upcoming = copy_next()
            yield images, target, skipped


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnTrainError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CnnTrainError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CnnTrainError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
        # A concrete index, so torch.cuda.set_device can make it current (no stray context on cuda:0).
        return torch.device("cuda", device.index or 0)
    elif device.type != "cpu":
        raise CnnTrainError(f"--device {name}: cnntrain runs on cpu or cuda")
    return device


@dataclass
class Precision:
    amp_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool

    @property
    def scaler_needed(self) -> bool:
        return self.amp_dtype == torch.float16

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        return f"{amp}{', channels_last' if self.channels_last else ''}"


def auto_amp_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 where the GPU computes it natively (compute capability 8.0 and later: A100,
    H100, RTX 30xx on), else fp16 with the grad scaler (T4, V100). torch's
    ``is_bf16_supported()`` counts emulation, and reads the current device, not the run's."""
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def choose_precision(device: torch.device, amp: str, channels_last: str) -> Precision:
    cuda = device.type == "cuda"
    if amp == "auto":
        dtype = auto_amp_dtype(torch.cuda.get_device_capability(device)) if cuda else None
    elif amp == "off":
        dtype = None
    elif amp == "fp16" and not cuda:
        raise CnnTrainError("train.amp = \"fp16\" needs CUDA; use \"bf16\" or \"off\" on CPU")
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    cl = True if channels_last == "auto" else channels_last == "on"
    return Precision(dtype, cl)


_TUNED = {"done": False}


def tune_cpu_process() -> bool:
    """Keep freed memory for reuse (glibc only; ``CNNTRAIN_KEEP_FREED_MEMORY=0`` turns it
    off). Returns whether the setting took. The process's resident size stays at its peak."""
    if _TUNED["done"]:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("CNNTRAIN_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, ...)
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    # glibc caps the mmap threshold at 32 MiB, and a batch of 64 float images of 224x224
    # is 38.5 MiB: such blocks would still be mapped fresh, and page-faulted in, every step
    # (seen costing 9 to 190 ms per batch in this VM). So no block is mmap'd at all.
    ok = mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_mmap_max, 0)
    ok = bool(ok) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))
    _TUNED["done"] = ok
    return ok


@dataclass(frozen=True)
class CudaTuning:
    """What :func:`prepare_cuda` switches on for one run (pure: see :func:`cuda_tuning`)."""
    autotune: bool  # torch.backends.cudnn.benchmark
    tf32_matmul: bool  # torch.set_float32_matmul_precision("high"), else "highest"


def cuda_tuning(capability: tuple[int, int], deterministic: bool, fixed_shapes: bool,
                training: bool) -> CudaTuning:
    """- cuDNN's benchmark picks the fastest convolution algorithms per input shape: worth
      it for fixed shapes (training, fixed-size evaluation), a new search per image for
      variable ones (dense evaluation of photos), and off when ``deterministic`` (the
      fastest may differ between runs).
    - fp32 matrix multiplies use TF32 on Ampere and later only in training, as cuDNN's
      convolutions already do by default; evaluation keeps full fp32 matmuls, so its fp32
      classifier head (``evaluate.fp32_head``) is fp32 indeed."""
    return CudaTuning(autotune=fixed_shapes and not deterministic,
                      tf32_matmul=training and capability >= (8, 0))


def prepare_cuda(device: torch.device, deterministic: bool, *, fixed_shapes: bool = False,
                 training: bool = False) -> None:
    """Make ``device`` current and tune cuDNN/cuBLAS for a run on it (:func:`cuda_tuning`).

    ``deterministic``: cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before CUDA starts; set
    here when absent, which is early enough as long as nothing used CUDA before.
    """
    if deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():
            raise CnnTrainError("train.deterministic = true on CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8 set "
                                "before CUDA starts; export it before running cnntrain")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    tuning = cuda_tuning(torch.cuda.get_device_capability(device), deterministic, fixed_shapes, training)
    torch.backends.cudnn.benchmark = tuning.autotune
    torch.set_float32_matmul_precision("high" if tuning.tf32_matmul else "highest")


def prepare_process(device: torch.device, deterministic: bool = False, *, fixed_shapes: bool = False,
                    training: bool = False) -> None:
    """The process set-up every command that runs models shares (fit through
    ``distributed.setup``, the benchmarks directly): :func:`prepare_cuda` on CUDA,
    :func:`tune_cpu_process` on CPU."""
    prepare_cuda(device, deterministic, fixed_shapes=fixed_shapes, training=training)
    if device.type == "cpu":
        tune_cpu_process()


@contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 inside (cuDNN uses TF32 for fp32
    convolutions by default on Ampere and later, and training sets matmuls to TF32 too);
    the settings are restored on exit."""
    precision, conv_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = conv_tf32


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every global RNG; with ``deterministic``, ask for deterministic kernels
    (an op without one raises, naming itself, rather than silently varying)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every global RNG state, as tensors and plain values (safe for weights_only loads)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
