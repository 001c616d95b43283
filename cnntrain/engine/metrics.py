"""Accuracy bookkeeping and the run's outputs: running top-k counts (:class:`Meter`),
``metrics.jsonl`` and TensorBoard scalars (:class:`RunLog`, written on rank 0 only), and
the one line printed per epoch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """How many rows have their target among the k highest scores, for each k, as a
    tensor on the logits' device (nothing is read back to the host)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target[:, None])
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> dict[int, int]:
    """:func:`topk_hits` as plain ints."""
    return dict(zip(ks, (int(v) for v in topk_hits(logits, target, ks).tolist())))


class Meter:
    """Running loss and top-k counts over an epoch or an evaluation.

    The sums stay on the device the logits are on: an update launches a few kernels and
    reads nothing back, so a GPU step never waits for the host on the meter's account
    (reading ``loss``, ``correct`` or ``result()`` synchronises, once; ``host_reads``
    counts those reads, so a test can tell how often the training loop makes them)."""

    def __init__(self, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = tuple(sorted(set(ks)))
        self.samples = 0
        self._loss: torch.Tensor | float = 0.0
        self._correct: torch.Tensor | list[int] = [0] * len(self.ks)
        self.host_reads = 0

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float | torch.Tensor) -> None:
        n = int(target.shape[0])
        self.samples += n
        loss = loss.detach().double() if isinstance(loss, torch.Tensor) else float(loss)
        self._loss = self._loss + loss * n
        hits = topk_hits(logits.detach().float(), target, self.ks)
        self._correct = hits if isinstance(self._correct, list) else self._correct + hits

    def _read(self) -> tuple[float, list[int]]:
        if isinstance(self._loss, torch.Tensor) or isinstance(self._correct, torch.Tensor):
            self.host_reads += 1
        loss = float(self._loss)
        correct = self._correct.tolist() if isinstance(self._correct, torch.Tensor) else list(self._correct)
        return loss, [int(c) for c in correct]

    @property
    def loss_sum(self) -> float:
        return self._read()[0]

    @loss_sum.setter
    def loss_sum(self, value: float) -> None:
        self._loss = float(value)

    @property
    def correct(self) -> dict[int, int]:
        return dict(zip(self.ks, self._read()[1]))

    @correct.setter
    def correct(self, value: dict[int, int]) -> None:
        self._correct = [int(value[k]) for k in self.ks]

    def counts(self) -> torch.Tensor:
        """[samples, loss sum, correct per k] as one float64 tensor, without a host read."""
        parts = [torch.as_tensor(v, dtype=torch.float64).reshape(1).cpu() if not isinstance(v, torch.Tensor)
                 else v.double().reshape(-1) for v in (float(self.samples), self._loss, self._correct)]
        device = next((p.device for p in parts if p.device.type != "cpu"), torch.device("cpu"))
        return torch.cat([p.to(device) for p in parts])

    def set_counts(self, values: list[float]) -> None:
        self.samples, self._loss = int(round(values[0])), values[1]
        self._correct = [int(round(v)) for v in values[2:]]

    def state_dict(self) -> dict[str, Any]:
        loss, correct = self._read()
        return {"samples": self.samples, "loss_sum": loss, "correct": dict(zip(self.ks, correct))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples, self.loss_sum = state["samples"], state["loss_sum"]
        self.correct = {int(k): v for k, v in state["correct"].items()}

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.samples)

    def accuracy(self, k: int) -> float:
        return 100.0 * self.correct[k] / max(1, self.samples)

    def result(self) -> dict[str, Any]:
        loss, correct = self._read()
        out: dict[str, Any] = {f"top{k}": 100.0 * c / max(1, self.samples) for k, c in zip(self.ks, correct)}
        out.update(loss=loss / max(1, self.samples), samples=self.samples)
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
             f"loss {r['train_loss']:.4f}",
             f"train top1{' (dominant label)' if r.get('train_top1_target') == 'dominant' else ''} "
             f"{r['train_top1']:.2f}%"]
    if "val_top1" in r:  # topk: eval.topk clipped to the class count; top-1 is printed once
        parts += [f"val top1 {r['val_top1']:.2f}%"]
        parts += [f"top{topk} {r.get(f'val_top{topk}', 0):.2f}%"] if topk != 1 else []
    parts += [f"lr {r['lr']:.4g}", f"{r['images_per_s']:.0f} img/s"]
    if r.get("skipped"):
        parts.append(f"skipped {r['skipped']} unreadable")
    if r.get("amp_skipped"):
        parts.append(f"fp16 overflow steps {r['amp_skipped']}")
    return "  ".join(parts)
