"""What a resume must agree with: the recipe, the world size and the torch version the
checkpoint recorded.

A resumed run continues the checkpoint's experiment. A recipe that differs in a key that
changes the result (the learning rate, the batch size, the augmentation, the data) is a
different experiment: that is an error listing the keys, unless ``--resume-force``.
Keys that cannot change the trained weights (:data:`FREE`) may differ freely, and so
may the run's length (``train.epochs``, ``train.iterations``): extending a run is what
``--resume`` is for. A different world size resumes too (the global batch is fixed), and a
different torch version, each with a note that the result is no longer bitwise
comparable with an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnntrain.errors import CnnTrainError

# Keys that never change the trained weights: bookkeeping, limits that only stop a run or
# skip a file that cannot be decoded safely (data.max_pixels: the dying-worker error advises
# lowering it and resuming), and the paper's citation.
FREE = {"name", "data.workers", "data.strict", "data.max_bad_fraction", "data.max_pixels", "train.save_every_steps",
        "train.keep_checkpoints", "train.watchdog", "train.requeue", "train.dist_timeout",
        "train.epochs", "train.iterations"}
FREE_SECTIONS = ("paper.",)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1} (tables inside sections stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not prefix:
            out.update(flatten(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys that change the result and differ between two recipes (as plain dicts)."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k not in FREE and not k.startswith(FREE_SECTIONS)]


def check_resume(payload: dict[str, Any], recipe: dict[str, Any], path: Path, force: bool, world: int) -> None:
    """Refuse (or, with ``force``, note) a resume into a different experiment."""
    saved = payload["meta"].get("recipe", {})
    diff = differing_keys(saved, recipe)
    if diff:
        a, b = flatten(saved), flatten(recipe)
        listed = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6]) + (" ..." if len(diff) > 6 else "")
        if not force:
            raise CnnTrainError(f"cannot resume from {path}: the recipe differs in {listed}; that would continue "
                                "a different experiment. Use another --out, or --resume-force to continue anyway")
        print(f"resume: --resume-force: the recipe differs in {listed}")
    saved_world = payload.get("world", 1)
    if saved_world != world:
        print(f"note: {path} was written by {saved_world} process(es), this run has {world}: it resumes with the "
              "same global batch, but the result is no longer bitwise comparable with an uninterrupted run")
    saved_torch = payload.get("torch")
    if saved_torch and saved_torch != torch.__version__:
        print(f"note: {path} was written with torch {saved_torch}, this is {torch.__version__}: results may "
              "differ in the last bits")
