"""Graceful stops: SIGTERM, SIGINT and SIGUSR1 (what SLURM sends before preemption)
ask the training loop to finish its current step, write a checkpoint and exit with
:data:`EXIT_STOPPED`. A second Ctrl-C exits at once."""
from __future__ import annotations

import signal
import threading

from cnntrain.errors import CnnTrainError

EXIT_STOPPED = 75  # EX_TEMPFAIL: "try again later"; resume with --resume auto
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))


class TrainingStopped(CnnTrainError):
    exit_code = EXIT_STOPPED


class GracefulStop:
    """Context manager that records a stop request instead of dying mid-step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = name

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
