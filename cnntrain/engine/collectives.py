"""The collective reductions the training loop and evaluation need across processes
(torchrun / ``--nproc``): a step's loss with the stop flag in one all-reduce, summed
counts and meters, a gather to rank 0, and a check that the ranks agree. Each is a
no-op returning its input in a single process. NCCL reduces on the GPU, Gloo on the CPU.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from cnntrain.engine.distributed import DistEnv
from cnntrain.errors import CnnTrainError


def _reduce_device(device: torch.device) -> torch.device:
    return device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")


def step_scalars(loss: torch.Tensor, flag: bool, env: DistEnv) -> tuple[torch.Tensor, float, bool]:
    """A step's loss averaged over the processes (as a tensor, and read once as a float)
    and whether any process raised ``flag`` (a stop request), in one collective and one
    host read: the guard on the loss needs the value before the update anyway."""
    if not env.enabled:
        return loss, float(loss), flag
    t = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(flag), device=loss.device)])
    t = t.to(_reduce_device(loss.device))
    dist.all_reduce(t)
    total, flags = t.tolist()
    return t[0] / env.world, total / env.world, flags > 0


def sum_ints(values: list[int], env: DistEnv, device: torch.device) -> list[int]:
    if not env.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(t)
    return [int(round(v)) for v in t.tolist()]


def reduce_meter(meter, env: DistEnv, device: torch.device):
    """Add up every process's samples, loss sum and top-k counts (in place)."""
    if not env.enabled:
        return meter
    t = meter.counts().to(_reduce_device(device))
    dist.all_reduce(t)
    meter.set_counts(t.tolist())
    return meter


def any_flag(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every process when any process raised ``flag`` (a stop request: all
    ranks must leave the loop at the same step, or the others hang in a collective)."""
    if not env.enabled:
        return flag
    (count,) = sum_ints([int(flag)], env, device)
    return count > 0


def gather_to_main(value: Any, env: DistEnv) -> list[Any] | None:
    """Every process's ``value`` as a list on rank 0 (None elsewhere); a collective."""
    if not env.enabled:
        return [value]
    out: list[Any] | None = [None] * env.world if env.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def agree(env: DistEnv, value: int, what: str) -> None:
    """Stop with a clear error when the processes disagree on ``value``."""
    if not env.enabled:
        return
    values: list[Any] = [None] * env.world
    dist.all_gather_object(values, int(value))
    if len(set(values)) > 1:
        raise CnnTrainError(f"the processes disagree on {what}: {values} (by rank); with several machines "
                            "--out must be on a filesystem that every machine sees")
