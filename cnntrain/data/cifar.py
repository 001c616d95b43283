"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the official python-pickle files.

Accepts a folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``, or one of
those folders itself. Nothing is downloaded. The pickles are read with an unpickler that
only admits the plain containers and numpy arrays these files hold, so a crafted file
cannot run code. CIFAR-100 uses the 100 fine labels.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnntrain.errors import CnnTrainError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR file")


def _get(batch: dict, key: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise CnnTrainError(f"CIFAR file {path} is missing; the official python version has it")
    try:
        with open(path, "rb") as fh:
            batch = _SafeUnpickler(fh, encoding="bytes").load()
        if not isinstance(batch, dict):
            raise pickle.UnpicklingError("not a dict")
        return batch
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CnnTrainError(
            f"CIFAR file {path} is damaged or not an official CIFAR pickle ({exc}); "
            "download the python version again"
        ) from None


def _images_labels(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _load_pickle(path)
    try:
        data = np.asarray(_get(batch, "data"), dtype=np.uint8)
        labels = np.asarray(_get(batch, label_key), dtype=np.int64)
    except KeyError as exc:
        raise CnnTrainError(f"CIFAR file {path} has no {exc.args[0]!r} entry; is it an official batch?") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CnnTrainError(f"CIFAR file {path}: expected N x 3072 pixel rows and N labels, got {data.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def find_cifar(root: Path) -> tuple[str, Path] | None:
    """('cifar10'|'cifar100', folder of the pickles) if ``root`` holds CIFAR, else None."""
    if (root / CIFAR10_DIR).is_dir():
        return "cifar10", root / CIFAR10_DIR
    if (root / CIFAR100_DIR).is_dir():
        return "cifar100", root / CIFAR100_DIR
    if (root / "data_batch_1").is_file() or (root / "batches.meta").is_file():
        return "cifar10", root
    if (root / "train").is_file() and (root / "test").is_file():
        return "cifar100", root
    return None


def load_cifar(kind: str, folder: Path) -> dict[str, Any]:
    """{'train': (images, labels), 'val': (images, labels), 'classes': [...]}."""
    if kind == "cifar10":
        parts = [_images_labels(folder / name, "labels") for name in CIFAR10_TRAIN]
        train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        val = _images_labels(folder / "test_batch", "labels")
        meta_key, meta_file = "label_names", "batches.meta"
    else:
        train = _images_labels(folder / "train", "fine_labels")
        val = _images_labels(folder / "test", "fine_labels")
        meta_key, meta_file = "fine_label_names", "meta"
    classes = _class_names(folder / meta_file, meta_key, 10 if kind == "cifar10" else 100)
    for split, (_, labels) in (("train", train), ("val", val)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise CnnTrainError(f"CIFAR {split} labels in {folder} fall outside 0..{len(classes) - 1}")
    return {"train": train, "val": val, "classes": classes}


def _class_names(path: Path, key: str, count: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(count)]
    names = _get(_load_pickle(path), key)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
