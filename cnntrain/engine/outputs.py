"""Saved outputs: what one evaluation produced, per image, kept so it can be looked at
(``eval --report``) or ensembled later without the models or the data
(``eval --save-logits FILE.npz``, ``ensemble --logits A.npz B.npz``).

A :class:`Scores` holds, in the evaluation loader's order: the logits (averaged over
the crops), the probabilities (the softmax averaged over the crops, as multi-crop
evaluation scores them), the labels, one identifier per image (its path for folder
datasets, ``val[i]`` for in-memory ones) and the class names. The ``.npz`` holds exactly
these arrays as plain numbers and strings, read back with ``allow_pickle=False``.

Combining saved outputs is the same arithmetic as ``cnntrain ensemble`` on checkpoints:
the mean of the members' probabilities (``prob``) or of their logits (``logit``), with
top-k counted by :func:`~cnntrain.engine.metrics.topk_hits`, so both agree exactly.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cnntrain.engine.metrics import topk_hits
from cnntrain.errors import CnnTrainError
from cnntrain.output import output_file

KEYS = ("logits", "probs", "labels", "ids", "classes")


@dataclass
class Scores:
    logits: np.ndarray  # (N, C) float32
    probs: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int64
    ids: list[str]
    classes: list[str]
    source: str = ""  # the checkpoint or file these came from

    def metrics(self, ks: tuple[int, ...], use_logits: bool = False) -> dict[str, Any]:
        """top-k accuracy (%), loss (mean negative log-probability of the true class) and
        samples, ranked by the probabilities (or the logits)."""
        ranked = torch.from_numpy(self.logits if use_logits else self.probs)
        y = torch.from_numpy(self.labels)
        n = len(self.labels)
        hits = topk_hits(ranked, y, ks).tolist() if n else [0] * len(ks)
        out: dict[str, Any] = {f"top{k}": 100.0 * h / max(1, n) for k, h in zip(ks, hits)}
        if use_logits:
            nll = torch.nn.functional.cross_entropy(ranked.double(), y, reduction="sum") if n else 0.0
        else:
            nll = -torch.from_numpy(self.probs).double().clamp_min(1e-12).log()[torch.arange(n), y].sum()
        out.update(loss=float(nll) / max(1, n), samples=n)
        return out

    def save(self, path: str | Path) -> None:
        path = output_file(path, "scores file")
        np.savez_compressed(path, logits=self.logits, probs=self.probs, labels=self.labels,
                            ids=np.array(self.ids, dtype=str), classes=np.array(self.classes, dtype=str))


def load_scores(path: str | Path) -> Scores:
    """A file written by ``eval --save-logits``; a one-line error for anything else."""
    hint = "write one with `cnntrain eval CKPT --save-logits FILE.npz`"
    if not Path(path).exists():
        raise CnnTrainError(f"{path} does not exist; write it with `cnntrain eval CKPT --save-logits {path}`")
    not_ours = CnnTrainError(f"{path} is not a .npz archive written by eval --save-logits; {hint}")
    # numpy reads any other file as a pickle and advises allow_pickle=True: a text file
    # or checkpoint must never get that advice, so only a zip is opened at all
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise not_ours
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data]
            if len(missing) == len(KEYS):
                raise not_ours
            if missing:
                raise CnnTrainError(f"{path} lacks {', '.join(missing)}; {hint}")
            arrays = {k: data[k] for k in KEYS}
    except OSError as exc:
        raise CnnTrainError(f"{path} cannot be read ({exc.strerror or exc}); {hint}") from None
    except (ValueError, zipfile.BadZipFile):  # a damaged archive, or one holding pickled objects
        raise not_ours from None
    return Scores(arrays["logits"].astype(np.float32), arrays["probs"].astype(np.float32),
                  arrays["labels"].astype(np.int64), [str(v) for v in arrays["ids"]],
                  [str(v) for v in arrays["classes"]], source=str(path))


def sample_ids(dataset: Dataset, skipped_paths: set[str]) -> list[str]:
    """The identifiers of the images an unsharded evaluation loader yields, in order:
    the paths of a folder dataset (less the unreadable ones it skipped), else ``val[i]``."""
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list):  # a synthetic dataset's `samples` is its count
        return [path for path, _ in samples if path not in skipped_paths]
    return [f"val[{i}]" for i in range(len(dataset))]


class Collector:
    """Gathers each member's scores batch by batch, on the host (evaluate's ``sink``)."""

    def __init__(self) -> None:
        self.logits: list[list[torch.Tensor]] = []
        self.probs: list[list[torch.Tensor]] = []
        self.labels: list[torch.Tensor] = []

    def add(self, logits: list[torch.Tensor], probs: list[torch.Tensor], target: torch.Tensor) -> None:
        self.logits.append([t.float().cpu() for t in logits])
        self.probs.append([t.float().cpu() for t in probs])
        self.labels.append(target.cpu())

    def member(self, i: int, ids: list[str], classes: list[str], source: str = "") -> Scores:
        def cat(parts: list[torch.Tensor]) -> np.ndarray:
            return torch.cat(parts).numpy() if parts else np.zeros((0, len(classes)), np.float32)

        labels = torch.cat(self.labels).numpy().astype(np.int64) if self.labels else np.zeros(0, np.int64)
        if len(ids) != len(labels):
            raise RuntimeError(f"{len(ids)} sample ids for {len(labels)} evaluated images")
        return Scores(cat([b[i] for b in self.logits]), cat([b[i] for b in self.probs]), labels, ids,
                      list(classes), source)


def check_aligned(members: list[Scores]) -> None:
    """Saved outputs combine only when they score the same images in the same order,
    with the same labels and classes."""
    first = members[0]
    for other in members[1:]:
        where = f"{other.source} and {first.source}"
        if other.classes != first.classes:
            raise CnnTrainError(f"{where} have different class lists; ensemble outputs of one dataset")
        if len(other.ids) != len(first.ids) or other.ids != first.ids:
            raise CnnTrainError(f"{where} score different images or the same in another order "
                                f"({len(other.ids)} vs {len(first.ids)} samples); save both with the same "
                                "--data and --split")
        if not np.array_equal(other.labels, first.labels):
            raise CnnTrainError(f"{where} give different labels to the same images; "
                                "ensemble outputs of one dataset")


def combine(members: list[Scores], how: str) -> Scores:
    """The ensemble's scores: mean probabilities (``prob``) or mean logits (``logit``,
    its probabilities the softmax of the mean)."""
    check_aligned(members)
    first = members[0]
    logits = torch.stack([torch.from_numpy(m.logits) for m in members]).mean(0)  # as `ensemble` does
    if how == "logit":
        probs = logits.softmax(-1)
    else:
        probs = torch.stack([torch.from_numpy(m.probs) for m in members]).mean(0)
    return Scores(logits.numpy(), probs.numpy(), first.labels, first.ids, first.classes, source=f"ensemble ({how})")
