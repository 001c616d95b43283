"""Checkpoints: atomic writes, safe loads, and rebuilding a model from one.

A checkpoint is a dict of tensors and plain Python values only (the recipe as a plain
dict, class names as strings), so it loads with ``torch.load(weights_only=True)`` and a
file from a stranger cannot run code. Writes go to a temporary file in the same folder,
are flushed and fsynced, then renamed over the old file: a crash at any moment leaves
either the old or the new checkpoint, never half of one.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import recipe_from_dict

FORMAT = "cnntrain-checkpoint-1"


def save_atomic(payload: dict[str, Any], path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """Write ``payload`` to ``path`` so that a crash leaves the old or the new file whole.

    With ``previous``, the file being replaced is kept under that name, so a checkpoint
    that later proves unreadable still has a predecessor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # torch.save reports a failed write (ENOSPC, EIO) as a RuntimeError of its zip writer.
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "writ" in str(exc)):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
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
    if not path.is_file():
        raise CnnTrainError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CnnTrainError(
            f"checkpoint {path} was refused: it holds something other than tensors and plain "
            f"values, which could run code on load ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CnnTrainError(
            f"checkpoint {path} is truncated or damaged ({str(exc).splitlines()[0]}); "
            "use another checkpoint (last.pt or best.pt)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CnnTrainError(f"{path} is not a cnntrain checkpoint")
    return payload


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
            f"({str(exc).splitlines()[0]})"
        ) from None
    return model
