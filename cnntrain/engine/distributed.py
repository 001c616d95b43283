"""Training on several processes: DistributedDataParallel through torch's elastic
launcher (``cnntrain fit --nproc N`` or ``torchrun ... -m cnntrain fit``), DataParallel,
and the few helpers the training loop and evaluation call.

- A process started by torchrun (or by ``--nproc``) finds RANK, WORLD_SIZE, LOCAL_RANK
  and LOCAL_WORLD_SIZE in its environment and joins the process group: NCCL with one GPU
  per process (``cuda:LOCAL_RANK``), Gloo on CPU, with ``train.dist_timeout`` seconds
  for any collective, so a lost peer ends the job instead of hanging it.
- ``optim.batch_size`` is the global batch: each process reads batch/world samples per
  step (and cuts them into ``train.accumulate`` micro-batches). The learning rate is the
  recipe's, unchanged.
- The training set is shuffled per epoch by a seeded permutation and sharded (padded to
  equal shards, as DistributedSampler does); the validation set is sharded without
  padding (``indices[rank::world]``) and the processes add up their counts, so every
  sample is counted exactly once.
- Only rank 0 prints, shows progress bars and writes checkpoints (of the unwrapped model,
  so they load on one device), metrics.jsonl and TensorBoard files.
- ``launch`` runs a function in N local processes through ``elastic_launch``; when one
  fails, the launcher stops the others and the error of the failing rank is raised in
  the parent as a :class:`ProcessFailed`, which the CLI prints before exiting non-zero.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from cnntrain.errors import CnnTrainError

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


class ProcessFailed(CnnTrainError):
    """A worker process of a multi-process job failed; carries its exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    from cnntrain.engine.device import resolve_device

    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = resolve_device(spec)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise CnnTrainError(f"--device {spec} picks one GPU, but this job runs {env.world} processes that "
                            "each use cuda:LOCAL_RANK; pass --device cuda")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise CnnTrainError(f"local rank {env.local_rank} has no GPU: {count} visible on this machine; "
                            f"start at most {count} processes per machine")
    return torch.device("cuda", env.local_rank)


def setup(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[DistEnv, torch.device]:
    """Join the process group if this process was launched as one of several, pick its
    device (and tune the process for it). Processes other than rank 0 stop printing to
    stdout."""
    from cnntrain.engine.device import resolve_device

    from cnntrain.engine.device import tune_cpu_process

    env = env_from_environ()
    dev = resolve_device(device) if not env.enabled else _rank_device(device, env)
    if dev.type == "cpu":
        tune_cpu_process()
    if not env.enabled:
        return env, dev
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    if dev.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
    if not env.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return env, dev


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe(env: DistEnv, device: torch.device, model: nn.Module | None = None) -> str:
    if isinstance(model, nn.DataParallel):
        return f"DataParallel on {len(model.device_ids)} GPUs"
    if not env.enabled:
        return str(device)
    backend = dist.get_backend() if dist.is_initialized() else "?"
    return f"{env.world} processes ({backend}) x {device.type}"


def check_launch(nproc: int, device: str, strategy: str) -> None:
    """Errors a user can fix before any process starts (exit code 2)."""
    if strategy not in STRATEGIES:
        raise CnnTrainError(f"--strategy {strategy!r}: use ddp or dp")
    if nproc < 1:
        raise CnnTrainError(f"--nproc {nproc}: give at least 1")
    launched = env_from_environ()
    if nproc > 1 and launched.enabled:
        raise CnnTrainError(f"this process is already rank {launched.rank} of {launched.world} started by "
                            "torchrun; leave out --nproc (torchrun's --nproc-per-node sets it)")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if strategy == "dp":
        if nproc > 1 or launched.enabled:
            raise CnnTrainError("--strategy dp runs one process over all visible GPUs; leave out --nproc "
                                "and torchrun, or use --strategy ddp")
        if not torch.cuda.is_available() or device == "cpu":
            raise CnnTrainError("--strategy dp (DataParallel) needs CUDA GPUs; none is usable here")
        return
    if nproc > 1 and cuda:
        if ":" in device:
            raise CnnTrainError(f"--device {device} picks one GPU; with --nproc {nproc} each process uses "
                                "its own GPU: pass --device cuda")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if nproc > count:
            raise CnnTrainError(f"--nproc {nproc} needs {nproc} GPUs (one per process) but {count} "
                                f"{'is' if count == 1 else 'are'} visible; use --nproc {max(count, 1)} "
                                "or --device cpu")


def per_process_batch(global_batch: int, env: DistEnv, accumulate: int = 1) -> int:
    """This process's share of the global batch (the recipe's optim.batch_size)."""
    if global_batch % env.world:
        raise CnnTrainError(f"optim.batch_size {global_batch} (the global batch) is not divisible by the "
                            f"{env.world} processes; use a multiple of {env.world}")
    per = global_batch // env.world
    if per % accumulate:
        raise CnnTrainError(f"each of the {env.world} processes reads {per} samples per step, which "
                            f"train.accumulate = {accumulate} cannot cut into equal micro-batches")
    return per


# --------------------------------------------------------------------------- model


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, strategy: str = "ddp",
               sync_bn: bool = False) -> nn.Module:
    """DataParallel over all visible GPUs (``dp``), or DDP when there are several
    processes (with SyncBatchNorm if asked). Call before building the optimiser."""
    if strategy == "dp":
        if device.type != "cuda":
            raise CnnTrainError("--strategy dp (DataParallel) needs CUDA GPUs")
        return nn.DataParallel(model)
    if not env.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise CnnTrainError("train.sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                                "set train.sync_bn = false for CPU runs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def eval_model(model: nn.Module) -> nn.Module:
    """The module to evaluate: DDP's inner module (evaluation needs no gradient sync)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def maybe_no_sync(model: nn.Module, sync: bool):
    """DDP's ``no_sync`` for micro-batches that only accumulate gradients."""
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


# --------------------------------------------------------------------------- data


def train_loader(dataset, batch_size: int, env: DistEnv, seed: int, workers: int, pin_memory: bool):
    """Seeded, sharded, per-sample-seeded training loader; call :func:`set_epoch` each epoch."""
    from cnntrain.data import EpochSampler, make_loader

    sampler = EpochSampler(len(dataset), seed, rank=env.rank, world=env.world)
    return make_loader(dataset, batch_size, workers=workers, sampler=sampler, pin_memory=pin_memory,
                       persistent=True)


def val_loader(dataset, batch_size: int, env: DistEnv, workers: int, pin_memory: bool):
    """This process's unpadded shard of an evaluation set."""
    from cnntrain.data import make_loader, shard

    return make_loader(shard(dataset, env.world, env.rank), batch_size, workers=workers,
                       pin_memory=pin_memory)


def reseed_rank(env: DistEnv, seed: int, epoch: int, start: int = 0) -> None:
    """With several processes, re-derive this process's global RNGs (dropout, PCA
    lighting) from (seed, epoch, rank, position): the ranks draw different noise, and a
    run resumed at an epoch boundary draws what the uninterrupted run drew without
    per-rank RNG states in the checkpoint. (One process keeps its RNG state in the
    checkpoint instead, which makes even mid-epoch resumes bitwise exact.)"""
    if env.enabled:
        from cnntrain.engine.device import seed_everything

        seed_everything(((seed * 1_000_003 + epoch) * 1_000_033 + start) * 1_009 + env.rank)


def check_batch(images: torch.Tensor, env: DistEnv) -> None:
    """Under DDP every process must take every step: a batch with no readable image
    cannot be skipped on one process alone."""
    if images.numel() == 0 and env.enabled:
        raise CnnTrainError(f"rank {env.rank} read a batch in which no image was readable; with several "
                            "processes every step needs data on each. Remove the unreadable files "
                            "(see skipped.txt) or use a larger batch")


# --------------------------------------------------------------------------- collectives


def _reduce_device(device: torch.device) -> torch.device:
    return device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")


def mean_scalar(value: torch.Tensor, env: DistEnv) -> float:
    """The mean over processes of a scalar tensor, as a float (the tensor's value alone
    with one process)."""
    if not env.enabled:
        return float(value)
    t = value.detach().float().reshape(1).to(_reduce_device(value.device))
    dist.all_reduce(t)
    return float(t) / env.world


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
    ks = list(meter.ks)
    t = torch.tensor([meter.samples, meter.loss_sum, *[meter.correct[k] for k in ks]],
                     dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(t)
    values = t.tolist()
    meter.samples, meter.loss_sum = int(round(values[0])), values[1]
    meter.correct = {k: int(round(v)) for k, v in zip(ks, values[2:])}
    return meter


def any_flag(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every process when any process raised ``flag`` (a stop request: all
    ranks must leave the loop at the same step, or the others hang in a collective)."""
    if not env.enabled:
        return flag
    (count,) = sum_ints([int(flag)], env, device)
    return count > 0


def agree(env: DistEnv, value: int, what: str) -> None:
    """Stop with a clear error when the processes disagree on ``value``."""
    if not env.enabled:
        return
    values: list[Any] = [None] * env.world
    dist.all_gather_object(values, int(value))
    if len(set(values)) > 1:
        raise CnnTrainError(f"the processes disagree on {what}: {values} (by rank); with several machines "
                            "--out must be on a filesystem that every machine sees")


# --------------------------------------------------------------------------- rank-0 outputs


class _NoLog:
    def epoch(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def run_log(out: Path, env: DistEnv):
    """metrics.jsonl and TensorBoard on rank 0; nothing elsewhere."""
    from cnntrain.engine.metrics import RunLog

    return RunLog(out) if env.is_main else _NoLog()


# --------------------------------------------------------------------------- launching


class UserError(Exception):
    """A CnnTrainError inside a launched process, named so the parent can tell it from a bug."""


def _worker(fn: Callable[..., Any], args: tuple) -> Any:
    # No graceful teardown on failure: it would close the peers' connections before this
    # process has recorded its error, and the launcher would report a peer's
    # "connection closed" instead of the cause.
    try:
        result = fn(*args)
    except CnnTrainError as exc:
        raise UserError(str(exc)) from None
    teardown()
    return result


@contextmanager
def _quiet_launcher(debug: bool):
    """torch's launcher logs every failure with a long traceback; the CLI reports the
    failing rank itself, so keep those logs for --debug."""
    names = ("torch.distributed.elastic", "torch.multiprocessing", "torch.distributed.launcher")
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    if not debug:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old):
            lg.setLevel(level)


def launch(fn: Callable[..., Any], args: tuple, nproc: int, *, debug: bool = False,
           rdzv_timeout_s: int = 900) -> Any:
    """Run ``fn(*args)`` in ``nproc`` processes on this machine (torch's elastic launcher,
    spawn start method); returns rank 0's result. The first failing process ends the job:
    the launcher stops the others and this raises :class:`ProcessFailed` with its error."""
    import tempfile

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="cnntrain-launch-") as logs:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                              run_id=f"cnntrain-{uuid.uuid4()}", rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                              rdzv_configs={"timeout": rdzv_timeout_s}, max_restarts=0, monitor_interval=0.1,
                              start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs))
        try:
            with _quiet_launcher(debug):
                results = elastic_launch(config, _worker)(fn, args)
        except ChildFailedError as exc:
            raise failure_error(exc, _recorded_errors(Path(logs))) from None
        except SignalException as exc:  # Ctrl-C or SIGTERM: the launcher has stopped the workers
            raise KeyboardInterrupt(f"stopped by {exc.sigval.name}") from None
    return results.get(0) if isinstance(results, dict) else results


def _recorded_errors(logs: Path) -> dict[int, dict]:
    """Every error a worker recorded (LOGS/<run>/attempt_N/<local rank>/error.json): the
    launcher itself reports only the first process it saw exit."""
    import json

    found: dict[int, dict] = {}
    for path in logs.glob("*/attempt_*/*/error.json"):
        try:
            found[int(path.parent.name)] = json.loads(path.read_text())["message"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


_PEER_LOST = re.compile(r"[Cc]onnection (closed|reset) by peer|Broken pipe|communicator was aborted|"
                        r"remote worker crashing|NCCL.*(abort|timeout)")


def _is_user_error(message: Any) -> bool:
    return isinstance(message, dict) and str(message.get("message", "")).startswith(f"{UserError.__name__}: ")


def failure_error(exc: Any, recorded: dict[int, dict] | None = None) -> ProcessFailed:
    """A one-line (for user errors) or traceback-bearing (for bugs) report of a failed
    job: a user error on any rank first (it makes its peers fail too, with "connection
    closed"), else the first failure the launcher saw."""
    rank, failure = exc.get_first_failure()
    users = sorted(r for r, m in (recorded or {}).items() if _is_user_error(m))
    users += sorted(r for r, f in exc.failures.items() if _is_user_error(f.message))
    if users:
        rank = users[0]
        message = (recorded or {}).get(rank) or exc.failures[rank].message
        return ProcessFailed(f"rank {rank}: {message['message'].split(': ', 1)[1]}", CnnTrainError.exit_code)
    code = failure.exitcode
    message = failure.message
    # Prefer a cause over a consequence: peers of a crashed rank fail with lost connections.
    causes = sorted((int(m.get("extraInfo", {}).get("timestamp", 0) or 0), r) for r, m in (recorded or {}).items()
                    if isinstance(m, dict) and not _PEER_LOST.search(str(m.get("message", ""))))
    if causes and (not isinstance(message, dict) or _PEER_LOST.search(str(message.get("message", "")))):
        rank = causes[0][1]
        message = recorded[rank]
        code = exc.failures[rank].exitcode if rank in exc.failures else 1
    text, stack = "", ""
    if isinstance(message, dict):
        text = str(message.get("message", ""))
        stack = str(message.get("extraInfo", {}).get("py_callstack", ""))
    elif message:
        text = str(message)
    if code is not None and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return ProcessFailed(f"rank {rank} was killed by signal {name}"
                             f"{' (out of memory?)' if name == 'SIGKILL' else ''}; the job stopped", 1)
    detail = f"\n{stack.rstrip()}" if stack else ""
    return ProcessFailed(f"rank {rank} failed (exit code {code}): {text or 'no error message'}{detail}",
                         code if code and code > 0 else 1)
