"""Launching a multi-process job on this machine (``cnntrain fit --nproc N``,
``cnntrain eval --nproc N``) through torch's elastic launcher, and turning a failed job
into one clear error.

``launch`` runs a function in N local processes (spawn start method); when one fails,
the launcher stops the others and the error of the failing rank is raised in the parent
as a :class:`ProcessFailed`, which the CLI prints before exiting non-zero. A user error
(:class:`CnnTrainError`) on any rank is preferred over its peers' "connection closed",
and a crashed rank's cause over the consequences it had on the others.

With ``max_restarts`` R (``fit --max-restarts R``), a failed group is started again, up to
R times, as ``torchrun --max-restarts`` does; the restarted processes see
``TORCHELASTIC_RESTART_COUNT`` > 0 and resume from the newest good checkpoint by
themselves (:mod:`cnntrain.engine.train`).
"""
from __future__ import annotations

import json
import logging
import re
import signal
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

import torch

from cnntrain.engine.distributed import STRATEGIES, env_from_environ, teardown
from cnntrain.errors import CnnTrainError


class ProcessFailed(CnnTrainError):
    """A worker process of a multi-process job failed; carries its exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_launch(nproc: int, device: str, strategy: str, max_restarts: int = 0) -> None:
    """Errors a user can fix before any process starts (exit code 2)."""
    if max_restarts < 0:
        raise CnnTrainError(f"--max-restarts {max_restarts}: give 0 or more")
    if max_restarts and nproc < 2:
        raise CnnTrainError("--max-restarts restarts a group of processes started with --nproc N (N >= 2); "
                            "for one process, let the scheduler restart it with --resume auto")
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
           rdzv_timeout_s: int = 900, max_restarts: int = 0) -> Any:
    """Run ``fn(*args)`` in ``nproc`` processes on this machine (torch's elastic launcher,
    spawn start method); returns rank 0's result. The first failing process ends the job:
    the launcher stops the others and this raises :class:`ProcessFailed` with its error."""
    with tempfile.TemporaryDirectory(prefix="cnntrain-launch-") as logs:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                              run_id=f"cnntrain-{uuid.uuid4()}", rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                              rdzv_configs={"timeout": rdzv_timeout_s}, max_restarts=max_restarts, monitor_interval=0.1,
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
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return ProcessFailed(f"rank {rank} was killed by signal {name}"
                             f"{' (out of memory?)' if name == 'SIGKILL' else ''}; the job stopped", 1)
    detail = f"\n{stack.rstrip()}" if stack else ""
    return ProcessFailed(f"rank {rank} failed (exit code {code}): {text or 'no error message'}{detail}",
                         code if code and code > 0 else 1)
