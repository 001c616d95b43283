"""The hang watchdog (``train.watchdog`` seconds; 0 = off).

A run that stops making progress without an error (a collective waiting on a lost peer,
a dead NFS mount, a wedged loader worker) would otherwise hold its GPUs until someone
looks. A daemon thread checks when the last training step (or validation) finished; once
that is longer ago than the limit, it writes every thread's stack (``faulthandler``) to
stderr and to ``OUT/watchdog.log``, and ends the process with :data:`EXIT_HUNG`, so a
scheduler or torch's elastic agent (``--max-restarts``) can restart it, and
``--resume auto`` continues from the last checkpoint.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

EXIT_HUNG = 124  # what coreutils' `timeout` uses for "took too long"


class Watchdog:
    """``beat()`` after each step; silent unless ``limit_s`` pass without one."""

    def __init__(self, limit_s: float, out: Path, rank: int = 0) -> None:
        self.limit_s, self.out, self.rank = limit_s, out, rank
        self.last = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def __enter__(self) -> Watchdog:
        if self.limit_s > 0:
            self.beat()
            self._thread = threading.Thread(target=self._watch, name="cnntrain-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _watch(self) -> None:
        period = min(max(self.limit_s / 10, 0.05), 10.0)
        while not self._done.wait(period):
            idle = time.monotonic() - self.last
            if idle > self.limit_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        message = (f"error: watchdog: no training step finished for {idle:.0f} s (train.watchdog = "
                   f"{self.limit_s:g}) on rank {self.rank}; stacks of every thread follow. Exiting with "
                   f"{EXIT_HUNG}; continue with --resume auto\n")
        sys.stderr.write(message)
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            with open(self.out / f"watchdog{'' if self.rank == 0 else f'-rank{self.rank}'}.log", "a") as fh:
                fh.write(message)
                fh.flush()
                faulthandler.dump_traceback(file=fh, all_threads=True)
        except OSError:
            pass
        os._exit(EXIT_HUNG)  # the hung thread cannot be interrupted; leave without it
