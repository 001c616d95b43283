"""Which file each loader worker is decoding, so that a worker killed inside a native
decoder (a segmentation fault in libpng, the OOM killer) can be reported with the file
it died on, and how the loader's workers are always shut down.

Each worker holds a small file ``DIR/worker-ID`` and overwrites its start with the path
of the file it opens (one ``pwrite`` per sample, NUL-terminated): no locking, no queue,
and the record survives the worker's death. The main process reads it back when
torch's DataLoader reports "DataLoader worker (pid ...) exited unexpectedly" or "is
killed by signal", and turns that into a one-line error.

cnntrain's workers ignore SIGTERM on purpose (:mod:`cnntrain.data.loaders`), so
DataLoader's own ``terminate()`` at shutdown cannot stop one that is stuck, and
interpreter exit would wait on it for ever: :func:`shutdown` kills what is left.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

_state: dict[str, int | None] = {"fd": None}
_PIDS = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)")


def start(folder: str, worker_id: int) -> None:
    """In a worker: keep ``folder/worker-ID`` open for :func:`note`."""
    _state["fd"] = os.open(os.path.join(folder, f"worker-{worker_id}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def note(path: str) -> None:
    """In a worker: record the file about to be decoded (a no-op in the main process)."""
    fd = _state["fd"]
    if fd is not None:
        os.pwrite(fd, path.encode("utf-8", "surrogateescape") + b"\0", 0)


def last_file(folder: str, worker_id: int) -> str | None:
    try:
        raw = Path(folder, f"worker-{worker_id}").read_bytes()
    except OSError:
        return None
    return raw.split(b"\0")[0].decode("utf-8", "surrogateescape") or None


def _workers(loader) -> list:
    iterator = getattr(loader, "_iterator", None) or getattr(loader, "_cnntrain_iterator", None)
    return list(getattr(iterator, "_workers", []) or [])


def worker_death(loader, exc: BaseException) -> str | None:
    """A one-line description of the dead worker(s) behind a DataLoader error, with the
    files they were decoding; None when ``exc`` is not a worker's death."""
    found = _PIDS.search(str(exc))
    folder = getattr(loader, "inflight_dir", None)
    if not found or folder is None:
        return None
    pids = {int(p) for p in found.group(1).replace(" ", "").split(",") if p}
    parts = []
    for worker_id, worker in enumerate(_workers(loader)):
        if worker.pid in pids or (worker.exitcode is not None and worker.exitcode != 0):
            code = worker.exitcode
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            parts.append(f"worker {worker_id} ({how}) while decoding {last_file(folder.name, worker_id) or 'an unknown file'}")
    if not parts:
        parts = [f"pid {p}" for p in sorted(pids)]
    return "; ".join(parts)


def shutdown(loader) -> None:
    """Stop the loader's workers whatever state they are in (SIGKILL for those left)."""
    iterator = getattr(loader, "_iterator", None)
    workers = _workers(loader)
    if iterator is not None:
        try:
            iterator._shutdown_workers()
        except Exception:  # noqa: BLE001 - a broken iterator is what we are cleaning up
            pass
        loader._iterator = None
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
