"""The draws that decide which blocks (stochastic depth) or paths (FractalNet's
drop-path) a model skips in a training step.

They come from one CPU generator of their own, not from torch's global RNG, and the
engine reseeds it before every step from (seed, step) (:func:`reseed`). So every DDP
process skips the same blocks: DDP's unused parameters are the same on every rank, and
SyncBatchNorm's collectives pair up (ranks that skipped different blocks would hang or
mix statistics of different layers). A resumed run skips what the uninterrupted one did,
and a draw costs no device synchronisation.
"""
from __future__ import annotations

import torch

_GENERATOR = torch.Generator()
_GENERATOR.manual_seed(0)


def reseed(seed: int, step: int) -> None:
    """Start the draws of training step ``step`` (the same on every process)."""
    _GENERATOR.manual_seed((seed * 1_000_003 + step) % (2**63))


def uniform() -> float:
    """One uniform draw in [0, 1)."""
    return float(torch.rand((), generator=_GENERATOR))


def state() -> torch.Tensor:
    return _GENERATOR.get_state()


def set_state(value: torch.Tensor) -> None:
    _GENERATOR.set_state(value)


class SkipsParameters:
    """Mixin marking a module whose training forward may leave parameters without a
    gradient (a skipped block or path): DDP must look for unused parameters."""

    skips_parameters = True


def skips_parameters(model: torch.nn.Module) -> bool:
    return any(getattr(m, "skips_parameters", False) for m in model.modules())
