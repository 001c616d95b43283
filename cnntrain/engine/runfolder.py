"""A run's folder belongs to one run: ``fit`` into a folder that already holds a run
refuses unless it resumes it (``--resume``) or ``--overwrite`` moves the old run aside
(to ``OUT.replaced-TIMESTAMP``, never deleted), and a lock file (``OUT/.lock``, an
``flock`` held for the run's life, with the holder's pid and host inside) makes a second
``fit`` into the same folder fail at once, naming the process that holds it. The kernel
releases the lock when its process dies, so a stale lock from a killed run is simply
taken over.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from cnntrain.errors import CnnTrainError

RUN_FILES = ("last.pt", "best.pt", "prev.pt", "metrics.jsonl")
LOCK = ".lock"


def holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / name).exists() for name in RUN_FILES)


def check_out(out: Path) -> None:
    """``--out`` must be a folder that can be created and written."""
    if out.exists() and not out.is_dir():
        raise CnnTrainError(f"--out {out} is a file; give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnTrainError(f"--out {out}: cannot create the run folder ({exc.strerror}); choose another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CnnTrainError(f"--out {out}: the folder is not writable; choose another --out")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``OUT/.lock`` for as long as it is held."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CnnTrainError(f"{self.path.parent} is in use by a running fit ({holder}); wait for it to end, "
                                "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def claim(out: Path, resume: str | None, overwrite: bool) -> RunLock:
    """Make ``out`` this run's folder and lock it; the caller releases the lock."""
    check_out(out)
    lock = RunLock(out).acquire()
    try:
        if holds_run(out) and resume is None:
            if not overwrite:
                raise CnnTrainError(f"{out} already holds a run; continue it with --resume auto, pick another "
                                    "--out, or pass --overwrite to move the old run aside")
            aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            lock.release()
            os.replace(out, aside)
            print(f"--overwrite: moved the previous run to {aside}")
            check_out(out)
            lock = RunLock(out).acquire()
    except BaseException:
        lock.release()
        raise
    return lock
