"""Several training processes: the process environment torchrun (or ``--nproc``)
describes, joining and leaving the process group, and wrapping the model (DDP,
DataParallel). The collective reductions the loop and evaluation need are
:mod:`cnntrain.engine.collectives`.

- A process started by torchrun (or by ``--nproc``, see :mod:`cnntrain.engine.launch`)
  finds RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in its environment and joins
  the process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``), Gloo on CPU,
  with ``train.dist_timeout`` seconds for any collective, so a lost peer ends the job
  instead of hanging it.
- ``optim.batch_size`` is the global batch: each process reads batch/world samples per
  step (and cuts them into ``train.accumulate`` micro-batches). The learning rate is the
  recipe's, unchanged.
- The data side (sharded loaders) is :mod:`cnntrain.data.loaders`; only rank 0 prints,
  shows progress bars and writes checkpoints, metrics.jsonl and TensorBoard files.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnntrain.engine.dataparallel import data_parallel
from cnntrain.engine.device import prepare_process, resolve_device, seed_everything
from cnntrain.errors import CnnTrainError
from cnntrain.models.drops import skips_parameters

STRATEGIES = ("ddp", "dp")
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands among the job's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


SINGLE = DistEnv()


def env_from_environ() -> DistEnv:
    """The DistEnv torchrun (or ``--nproc``) describes in the environment; SINGLE if none."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return SINGLE
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as exc:
        raise CnnTrainError(f"malformed torchrun environment: {exc}") from None
    return DistEnv(rank, world, local_rank, local_world)


# --------------------------------------------------------------------------- set-up


def _rank_device(spec: str, env: DistEnv) -> torch.device:
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = resolve_device(spec)  # checks it (resolved, "cuda" names cuda:0)
    if device.type != "cuda":
        return device
    if spec != "auto" and torch.device(spec).index is not None:
        raise CnnTrainError(f"--device {spec} picks one GPU, but this job runs {env.world} processes that "
                            "each use cuda:LOCAL_RANK; pass --device cuda")
    count = torch.cuda.device_count()
    if count == 1:  # SLURM and other launchers often show each process its own GPU only
        return torch.device("cuda", 0)
    if env.local_rank >= count:
        raise CnnTrainError(f"local rank {env.local_rank} has no GPU: {count} visible on this machine; "
                            f"start at most {count} processes per machine")
    return torch.device("cuda", env.local_rank)


def setup(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S, deterministic: bool = False, *,
          fixed_shapes: bool = False, training: bool = False) -> tuple[DistEnv, torch.device]:
    """Join the process group if this process was launched as one of several, pick its
    device (and tune the process for it: ``fixed_shapes`` and ``training`` as
    :func:`device.cuda_tuning` takes them). Processes other than rank 0 stop printing to
    stdout."""
    env = env_from_environ()
    dev = resolve_device(device) if not env.enabled else _rank_device(device, env)
    prepare_process(dev, deterministic, fixed_shapes=fixed_shapes, training=training)
    if not env.enabled:
        return env, dev
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # Each elastic attempt gets its own key space: a restarted group sharing the agent's
        # store would otherwise read the dead attempt's addresses and fail to connect.
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
        store = dist.PrefixStore(f"cnntrain/attempt_{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world,
                                timeout=timedelta(seconds=timeout_s), device_id=dev if dev.type == "cuda" else None)
    if dev.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
    if not env.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return env, dev


def restart_count() -> int:
    """How many times torch's elastic agent has restarted this job (0: first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe(env: DistEnv, device: torch.device, model: nn.Module | None = None) -> str:
    if isinstance(model, nn.DataParallel):
        return f"DataParallel on {len(model.device_ids)} GPUs (cuda:{model.output_device} leads)"
    if not env.enabled:
        return str(device)
    backend = dist.get_backend() if dist.is_initialized() else "?"
    return f"{env.world} processes ({backend}) x {device.type}"


def per_process_batch(global_batch: int, env: DistEnv, accumulate: int = 1) -> int:
    """This process's share of the global batch (the recipe's optim.batch_size)."""
    if global_batch % env.world:
        raise CnnTrainError(f"optim.batch_size {global_batch} (the global batch) is not divisible by the "
                            f"{env.world} processes; use a multiple of {env.world}")
    per = global_batch // env.world
    if per % accumulate:
        who = (f"each of the {env.world} processes reads {per} samples per step, which" if env.world > 1
               else f"optim.batch_size {per}, which")
        raise CnnTrainError(f"{who} train.accumulate = {accumulate} cannot cut into equal micro-batches; "
                            f"use a batch size that is a multiple of {accumulate * env.world}")
    return per


# --------------------------------------------------------------------------- model


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, strategy: str = "ddp",
               sync_bn: bool = False, amp_dtype: torch.dtype | None = None) -> nn.Module:
    """DataParallel over all visible GPUs (``dp``), or DDP when there are several
    processes (with SyncBatchNorm if asked). Call before building the optimiser.

    Models that skip blocks or paths in training (stochastic depth, FractalNet) leave
    parameters without gradients: DDP looks for them (``find_unused_parameters``). Their
    drop decisions agree across ranks (:mod:`cnntrain.models.drops`), so the unused sets,
    and SyncBatchNorm's collectives, are the same on every process."""
    if strategy == "dp":
        return data_parallel(model, device, amp_dtype)
    if not env.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise CnnTrainError("train.sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                                "set train.sync_bn = false for CPU runs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None,
                                   find_unused_parameters=skips_parameters(model))


def maybe_no_sync(model: nn.Module, sync: bool):
    """DDP's ``no_sync`` for micro-batches that only accumulate gradients."""
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


# --------------------------------------------------------------------------- per-rank data


def reseed_rank(env: DistEnv, seed: int, epoch: int, start: int = 0) -> None:
    """With several processes, re-derive this process's global RNGs (dropout, PCA
    lighting) from (seed, epoch, rank, position): the ranks draw different noise, and a
    run resumed at an epoch boundary draws what the uninterrupted run drew without
    per-rank RNG states in the checkpoint. (One process keeps its RNG state in the
    checkpoint instead, which makes even mid-epoch resumes bitwise exact.)"""
    if env.enabled:
        seed_everything(((seed * 1_000_003 + epoch) * 1_000_033 + start) * 1_009 + env.rank)
