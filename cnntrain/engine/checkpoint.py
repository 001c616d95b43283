"""Checkpoints: atomic writes, safe loads, and rebuilding a model from one.

A checkpoint is a dict of tensors and plain Python values only (the recipe as a plain
dict, class names as strings), so it loads with ``torch.load(weights_only=True)`` and a
file from a stranger cannot run code. Writes go to a temporary file in the same folder,
are flushed and fsynced, then renamed over the old file, and the folder is fsynced so
the rename itself survives a power cut: a crash at any moment leaves either the old or
the new checkpoint, never half of one.

Each checkpoint ``X.pt`` has a sidecar ``X.pt.sha256`` holding the SHA-256 of its bytes,
written (and fsynced) after it; :func:`load_checkpoint` checks it, so a file damaged
after it was written (a truncated copy, a flipped byte on shared storage) is reported as
damaged instead of being loaded. A checkpoint without a sidecar (copied alone) loads
unchecked.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.errors import CnnTrainError, first_line
from cnntrain.recipe import recipe_from_dict

FORMAT = "cnntrain-checkpoint-1"


def sidecar(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of checkpoint ``path`` is kept."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _write_synced(data: bytes, path: Path) -> None:
    """``data`` into ``path`` through a fsynced temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _move(src: Path, dst: Path) -> None:
    """Rename a checkpoint and its sidecar (a missing sidecar stays missing)."""
    if src.exists():
        os.replace(src, dst)
        if sidecar(src).exists():
            os.replace(sidecar(src), sidecar(dst))
        elif sidecar(dst).exists():
            os.unlink(sidecar(dst))


def save_atomic(payload: dict[str, Any], path: str | os.PathLike,
                previous: list[str | os.PathLike] | str | os.PathLike | None = None) -> None:
    """Write ``payload`` to ``path`` so that a crash leaves the old or the new file whole.

    ``previous`` names where the files being replaced go, newest first: ``path`` moves to
    ``previous[0]``, that one to ``previous[1]`` and so on (the oldest is dropped), so a
    checkpoint that later proves damaged still has predecessors."""
    path = Path(path)
    chain = [Path(previous)] if isinstance(previous, (str, os.PathLike)) else [Path(p) for p in previous or []]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        _write_synced(data, path.with_name(f".{path.name}.new"))
        for older, newer in zip(reversed(chain), reversed([path, *chain[:-1]])):
            _move(newer, older)
        _move(path.with_name(f".{path.name}.new"), path)
        # The sidecar comes last: a crash just before it leaves a checkpoint whose hash
        # does not match, which --resume auto passes over for its predecessor.
        _write_synced(hashlib.sha256(data).hexdigest().encode() + b"\n", sidecar(path))
    except BaseException as exc:
        try:
            os.unlink(path.with_name(f".{path.name}.new"))
        except FileNotFoundError:
            pass
        # torch.save reports a failed write (ENOSPC, EIO) as a RuntimeError of its zip writer.
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "writ" in str(exc)):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            raise CnnTrainError(
                f"could not write checkpoint {path}: {reason}; the previous checkpoint is intact. "
                "Free disk space or choose another --out, then --resume auto"
            ) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a cnntrain checkpoint safely, with a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        raise CnnTrainError(f"checkpoint {path} is a folder; give a file in it, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise CnnTrainError(f"checkpoint {path} does not exist")
    verify(path)
    if not torch_saved(path):
        raise CnnTrainError(f"{path} is not a cnntrain checkpoint (not a file torch.save wrote); "
                            "give a best.pt or last.pt")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CnnTrainError(
            f"checkpoint {path} was refused: it holds something other than tensors and plain "
            f"values, which could run code on load ({first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as exc:
        # A file that is no zip archive at all (a TOML file, a text file) fails deep in the
        # legacy pickle reader, with an IndexError or KeyError.
        raise CnnTrainError(
            f"checkpoint {path} is truncated or damaged ({first_line(exc)}); "
            "use another checkpoint (last.pt or best.pt)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CnnTrainError(f"{path} is not a cnntrain checkpoint")
    return payload


def torch_saved(path: Path) -> bool:
    """Whether ``path`` starts like a file torch.save wrote: its zip archive, or its
    legacy pickle. Anything else (a text file, an empty file) fails deep inside
    torch.load with a misleading message, or none at all."""
    with open(path, "rb") as fh:
        return fh.read(4).startswith((b"PK\x03\x04", b"\x80"))


def verify(path: Path) -> None:
    """Compare ``path`` with the SHA-256 its sidecar recorded when it was written."""
    side = sidecar(path)
    if not side.is_file():
        return
    try:
        expected = side.read_text().split()[0]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise CnnTrainError(f"checkpoint {path} cannot be verified ({exc}); use another checkpoint") from None
    if digest.hexdigest() != expected:
        raise CnnTrainError(f"checkpoint {path} is damaged: its SHA-256 differs from the one recorded in {side} "
                            "when it was written (truncated or altered since); use another checkpoint "
                            "(prev.pt, or --resume auto to take the newest good one)")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel/torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_meta(recipe_dict: dict, classes: list[str], channels: int, mean, std) -> dict[str, Any]:
    return {
        "arch": recipe_dict["model"]["arch"],
        "classes": list(classes),
        "in_channels": int(channels),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "recipe": recipe_dict,
    }


def build_from_checkpoint(payload: dict[str, Any], source: str) -> nn.Module:
    """Rebuild the model a checkpoint was trained as, and load its weights."""

    meta = payload["meta"]
    recipe = recipe_from_dict(meta["recipe"], source=source)
    model = model_from_recipe(recipe, len(meta["classes"]), meta["in_channels"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CnnTrainError(
            f"{source}: its weights do not fit {meta['arch']} with {len(meta['classes'])} classes "
            f"({first_line(exc)})"
        ) from None
    return model
