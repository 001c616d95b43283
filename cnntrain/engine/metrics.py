"""Accuracy bookkeeping and the run's outputs: running top-k counts (:class:`Meter`),
``metrics.jsonl`` and TensorBoard scalars (:class:`RunLog`, written on rank 0 only), and
the one line printed per epoch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> dict[int, int]:
    """How many rows have their target among the k highest scores, for each k."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target[:, None])
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


class Meter:
    """Running loss and top-k counts over an epoch or an evaluation."""

    def __init__(self, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = tuple(sorted(set(ks)))
        self.samples = 0
        self.loss_sum = 0.0
        self.correct = {k: 0 for k in self.ks}

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float) -> None:
        n = int(target.shape[0])
        self.samples += n
        self.loss_sum += float(loss) * n
        for k, c in topk_correct(logits.detach().float(), target, self.ks).items():
            self.correct[k] += c

    def add_counts(self, samples: int, loss_sum: float, correct: dict[int, int]) -> None:
        self.samples += samples
        self.loss_sum += loss_sum
        for k in self.ks:
            self.correct[k] += correct[k]

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "loss_sum": self.loss_sum, "correct": dict(self.correct)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples, self.loss_sum = state["samples"], state["loss_sum"]
        self.correct = {int(k): v for k, v in state["correct"].items()}

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.samples)

    def accuracy(self, k: int) -> float:
        return 100.0 * self.correct[k] / max(1, self.samples)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"top{k}": self.accuracy(k) for k in self.ks}
        out.update(loss=self.loss, samples=self.samples)
        return out


class RunLog:
    """One JSON object per epoch in metrics.jsonl, the same scalars in TensorBoard."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def epoch(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["epoch"]
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    group = key.split("_", 1)
                    tag = f"{group[0]}/{group[1]}" if len(group) == 2 else key
                    self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _NoLog:
    def epoch(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def run_log(out: Path, is_main: bool) -> RunLog | _NoLog:
    """metrics.jsonl and TensorBoard on rank 0; nothing elsewhere."""
    return RunLog(out) if is_main else _NoLog()


def epoch_line(record: dict[str, Any], epochs: int, topk: int) -> str:
    """The line printed after each epoch."""
    r = record
    parts = [f"epoch {r['epoch']}/{epochs}", f"step {r['step']}",
             f"loss {r['train_loss']:.4f}", f"train top1 {r['train_top1']:.2f}%"]
    if "val_top1" in r:
        parts += [f"val top1 {r['val_top1']:.2f}%", f"top{topk} {r.get(f'val_top{topk}', 0):.2f}%"]
    parts += [f"lr {r['lr']:.4g}", f"{r['images_per_s']:.0f} img/s"]
    if r.get("skipped"):
        parts.append(f"skipped {r['skipped']} unreadable")
    if r.get("amp_skipped"):
        parts.append(f"fp16 overflow steps {r['amp_skipped']}")
    return "  ".join(parts)
