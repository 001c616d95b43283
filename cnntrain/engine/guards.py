"""What the training loop guards against, in one place: unreadable images (listed in
``skipped.txt``, or a stop with ``data.strict``, or once more than
``data.max_bad_fraction`` of an epoch's images were unreadable: a broken mount must not
train on nothing), a batch with nothing readable under
DDP, a non-finite loss (stop with :data:`EXIT_NONFINITE`, or skip up to
``train.max_nonfinite_steps`` steps), and the message of a graceful stop."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from cnntrain.engine.distributed import DistEnv
from cnntrain.engine.runstate import Progress
from cnntrain.engine.signals import TrainingStopped
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe

EXIT_NONFINITE = 3


class NonFiniteLoss(CnnTrainError):
    exit_code = EXIT_NONFINITE


def stopped(reason: str | None, where: str, out: Path) -> TrainingStopped:
    """The error a graceful stop ends the run with (exit code 75)."""
    return TrainingStopped(f"stopped by {reason or 'a signal to another process'} {where}; "
                           f"checkpoint {out / 'last.pt'}; continue with --resume auto")


class Guards:
    """Skipped-file bookkeeping and the loss check, for one run."""

    def __init__(self, recipe: Recipe, out: Path, env: DistEnv, progress: Progress) -> None:
        self.strict = recipe.data.strict
        self.on_nonfinite, self.max_nonfinite = recipe.train.on_nonfinite, recipe.train.max_nonfinite_steps
        self.out, self.env, self.progress = out, env, progress
        self.skipped: list[str] = []
        self.max_bad = recipe.data.max_bad_fraction
        self.epoch_images, self.epoch_bad = 0, 0

    def begin_epoch(self, images: int) -> None:
        """Count this epoch's unreadable images against its ``images`` (this process's share)."""
        self.epoch_images, self.epoch_bad = images, 0

    def note_skipped(self, skipped: list, training: bool = True) -> None:
        if not skipped:
            return
        if training:
            self.epoch_bad += len(skipped)
        if self.strict:
            bad = skipped[0]
            raise CnnTrainError(f"unreadable image {bad.path} ({bad.reason}); data.strict = true stops here")
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "skipped.txt", "a") as fh:
            for bad in skipped:
                fh.write(f"{bad.path}\t{bad.reason}\n")
        self.skipped += [bad.path for bad in skipped]
        if training and self.epoch_bad > self.max_bad * self.epoch_images:
            raise CnnTrainError(
                f"{self.epoch_bad} of this epoch's {self.epoch_images} images were unreadable, more than "
                f"data.max_bad_fraction = {self.max_bad:g}; the list is {self.out / 'skipped.txt'}. Check the data "
                "(a broken mount?), or raise data.max_bad_fraction")

    def empty_batch(self, images: torch.Tensor) -> None:
        """Under DDP every process must take every step: a batch with no readable image
        cannot be skipped on one process alone."""
        if images.numel() == 0 and self.env.enabled:
            raise CnnTrainError(f"rank {self.env.rank} read a batch in which no image was readable; with several "
                                "processes every step needs data on each. Remove the unreadable files "
                                "(see skipped.txt) or use a larger batch")

    @contextmanager
    def deterministic_kernels(self) -> Iterator[None]:
        """With train.deterministic, an op that has no deterministic kernel on this device
        stops the run with its name, not a traceback."""
        try:
            yield
        except RuntimeError as exc:
            if "deterministic" not in str(exc):
                raise
            raise CnnTrainError(f"train.deterministic = true, but {str(exc).splitlines()[0]} Set "
                                "train.deterministic = false, or use a model without that operation") from None

    def loss_ok(self, value: float, lr: float) -> bool:
        """False skips the update (train.on_nonfinite = "skip"); stopping raises."""
        if math.isfinite(value):
            return True
        p = self.progress
        if self.on_nonfinite == "skip" and p.nonfinite_skipped < self.max_nonfinite:
            p.nonfinite_skipped += 1
            print(f"warning: loss is {value} at step {p.step + 1}; step skipped "
                  f"({p.nonfinite_skipped} of at most {self.max_nonfinite})")
            return False
        last = self.out / "last.pt"
        where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        limit = (f" after skipping {p.nonfinite_skipped} such steps (train.max_nonfinite_steps)"
                 if self.on_nonfinite == "skip" else "")
        raise NonFiniteLoss(
            f"loss became {value} at step {p.step + 1} (epoch {p.epoch + 1}, lr {lr:.4g}){limit}; "
            f"{where}. Lower optim.lr, check the data, or set train.on_nonfinite = \"skip\""
        )
