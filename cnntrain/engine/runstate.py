"""Where a run stands, and its checkpoints: ``last.pt`` (everything the next step depends
on), ``prev.pt``, ``prev2.pt``, ... (the ones before, ``train.keep_checkpoints`` step
checkpoints in all) and ``best.pt`` (weights only), and resuming from the newest one
that loads and matches its recorded SHA-256.

``last.pt`` holds the weights, optimiser, schedule, scaler, the epoch and position in
it, the epoch's running metrics, the skip counters, and every process's RNG and sampler
state (gathered from all ranks: saving is a collective), so a run killed at any step and
resumed with the same number of processes ends bitwise equal to one that was never
stopped (on CPU). It also records the torch version, the world size and the resolved
recipe, which :mod:`~cnntrain.engine.resumecheck` compares before resuming.
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnntrain import __version__
from cnntrain.engine.checkpoint import FORMAT, load_checkpoint, save_atomic, unwrap
from cnntrain.engine.device import rng_state, set_rng_state
from cnntrain.engine.resumecheck import check_resume
from cnntrain.engine.ema import WeightAverage
from cnntrain.engine.metrics import Meter
from cnntrain.engine.optim import LRSchedule
from cnntrain.errors import CnnTrainError

MARKER = ".running"  # OUT/.running while fit runs: `cnntrain runs` tells running from interrupted


@contextmanager
def running_marker(out: Path, enabled: bool = True) -> Iterator[None]:
    """``OUT/.running`` (host and process id) while the body runs, removed however it ends
    (a SIGKILL leaves it naming a dead process, which ``cnntrain runs`` checks)."""
    marker = Path(out) / MARKER
    if enabled:
        marker.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        yield
    finally:
        if enabled:
            marker.unlink(missing_ok=True)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Restore the fp16 grad scaler's state where both sides have one: a checkpoint from
    a CPU, fp32 or bf16 run holds an empty state (its scaler was off), which an enabled
    scaler refuses; it then starts from its initial scale."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        print("resume: the checkpoint's run had no fp16 grad scaler; starting one at its initial scale")


@dataclass
class Progress:
    """The counters a resumed run continues from."""

    epoch: int = 0  # completed epochs
    epoch_step: int = 0  # completed steps within the current epoch
    step: int = 0  # completed optimisation steps
    best_top1: float | None = None
    meter: Meter = field(default_factory=lambda: Meter((1,)))  # the current epoch's training metrics
    nonfinite_skipped: int = 0
    amp_skipped: int | torch.Tensor = 0  # fp16 overflow: skipped by the scaler, by design (a device count)


@dataclass
class RunState:
    """The parts of a run a checkpoint holds, and how to save and restore them."""

    out: Path
    meta: dict[str, Any]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    ema: WeightAverage | None
    progress: Progress = field(default_factory=Progress)
    keep: int = 2  # step checkpoints kept (train.keep_checkpoints)
    rank: int = 0
    world: int = 1
    force: bool = False  # --resume-force: resume although the recipe changed
    rng_restored: bool = False  # this rank's RNG came from the checkpoint (mid-epoch: no reseeding)

    def rank_state(self, position: int) -> dict[str, Any]:
        """What each process contributes to a checkpoint: its RNG and sampler state."""
        p = self.progress
        return {"rng": rng_state(), "sampler": {"epoch": p.epoch, "position": position,
                                                "rank": self.rank, "world": self.world}}

    def state_dict(self, ranks: list[dict] | None = None) -> dict[str, Any]:
        p = self.progress
        ranks = ranks or [self.rank_state(0)]
        return {
            "format": FORMAT,
            "version": __version__,
            "meta": self.meta,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": p.epoch,
            "epoch_step": p.epoch_step,
            "step": p.step,
            "best_top1": p.best_top1,
            "meter": p.meter.state_dict(),
            "counters": {"nonfinite_skipped": p.nonfinite_skipped, "amp_skipped": int(p.amp_skipped)},
            "rng": ranks[0]["rng"],
            "ranks": ranks,
            "world": len(ranks),
            "torch": str(torch.__version__),  # a plain str: TorchVersion would not load with weights_only
            **({"ema": self.ema.state_dict()} if self.ema else {}),
        }

    def save(self, improved: bool = False, ranks: list[dict] | None = None) -> None:
        """Write last.pt (and best.pt when ``improved``); on rank 0, with every rank's
        state gathered in ``ranks``."""
        state = self.state_dict(ranks)
        previous = [self.out / f"prev{'' if i == 1 else i}.pt" for i in range(1, self.keep)]
        save_atomic(state, self.out / "last.pt", previous=previous)
        if improved:
            weights = {k: state[k] for k in ("format", "version", "meta", "model", "epoch", "step", "best_top1")}
            if self.ema is not None:  # best.pt holds the averaged weights that were validated
                weights["model"] = state["ema"]["model"]
            save_atomic(weights, self.out / "best.pt")

    # ----------------------------------------------------------------- resume

    def _candidates(self, spec: str) -> list[Path]:
        if spec != "auto":
            return [Path(spec)]
        return [p for p in (self.out / "last.pt", *sorted(self.out.glob("prev*.pt"))) if p.is_file()]

    def _newest(self, spec: str) -> tuple[Path, dict] | None:
        """The loadable checkpoint with the most steps; says which others were passed over."""
        found: list[tuple[int, Path]] = []
        best: tuple[int, Path, dict] | None = None  # only the newest payload is kept in memory
        for path in self._candidates(spec):
            try:
                payload = load_checkpoint(path)
            except CnnTrainError as exc:
                if spec != "auto":
                    raise
                print(f"resume: passing over damaged {path}: {exc}")
                continue
            if "optimizer" not in payload:
                raise CnnTrainError(f"{path} holds weights only (a best.pt); resume from last.pt")
            found.append((payload["step"], path))
            if best is None or payload["step"] > best[0]:
                best = (payload["step"], path, payload)
        if best is None:
            return None
        for other_step, other in sorted(found, key=lambda item: item[0], reverse=True):
            if other != best[1]:
                print(f"resume: passing over {other} (step {other_step}, older)")
        return best[1], best[2]

    def resume(self, spec: str, truncate_log: bool = True) -> None:
        """Restore the newest loadable checkpoint (``spec``: "auto" or a path)."""
        newest = self._newest(spec)
        if newest is None:
            print(f"resume: no usable checkpoint in {self.out}, starting from scratch")
            return
        path, payload = newest
        meta, arch, classes = payload["meta"], self.meta["arch"], len(self.meta["classes"])
        if meta["arch"] != arch or len(meta["classes"]) != classes:
            raise CnnTrainError(
                f"cannot resume from {path}: it holds {meta['arch']} with {len(meta['classes'])} classes, "
                f"this run trains {arch} with {classes}; use another --out"
            )
        check_resume(payload, self.meta["recipe"], path, self.force, self.world)
        unwrap(self.model).load_state_dict(payload["model"])
        if self.ema is not None:  # a checkpoint from a run without averaging starts it from the weights
            self.ema.load_state_dict(payload.get("ema") or {"model": payload["model"], "updates": 0})
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        load_scaler_state(self.scaler, payload["scaler"])
        p = self.progress
        p.epoch, p.epoch_step, p.step = payload["epoch"], payload["epoch_step"], payload["step"]
        p.best_top1 = payload["best_top1"]
        p.meter.load_state_dict(payload["meter"])
        p.nonfinite_skipped = payload["counters"]["nonfinite_skipped"]
        p.amp_skipped = payload["counters"]["amp_skipped"]
        self._restore_rng(payload)
        if truncate_log:
            self._truncate_metrics()
        print(f"resume: {path} at epoch {p.epoch}, step {p.step}"
              f"{f' ({p.epoch_step} into epoch {p.epoch + 1})' if p.epoch_step else ''}")

    def _restore_rng(self, payload: dict[str, Any]) -> None:
        """This rank's own RNG state when the world size is unchanged; otherwise the
        epoch's per-rank reseeding takes over (see distributed.reseed_rank)."""
        ranks = payload.get("ranks") or [{"rng": payload["rng"]}]
        if len(ranks) == self.world:
            set_rng_state(ranks[self.rank]["rng"])
            self.rng_restored = True

    def _truncate_metrics(self) -> None:
        """Drop log lines of epochs the checkpoint does not contain (written before a kill)."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines()
            keep = [line for line in lines if line.strip() and json.loads(line)["epoch"] <= self.progress.epoch]
            if len(keep) != len(lines):
                path.write_text("".join(line + "\n" for line in keep))
