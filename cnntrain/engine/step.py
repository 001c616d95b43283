"""One optimisation step of ``cnntrain fit``, shared by the training loop and
``cnntrain bench train``.

A step takes the uint8 batch of this process, prepares it on the device (float,
normalisation, PCA lighting, channels_last), runs forward and backward under the
precision policy (autocast, grad scaler) and steps the optimiser. With
``train.accumulate = k`` the batch is cut into k equal micro-batches whose gradients add
up before the one optimiser step (each loss weighted by its share of the batch, so the
gradient is the whole batch's mean); under DDP the gradient all-reduce runs only on the
last micro-batch (``no_sync`` on the others). The step's loss is averaged over the
processes, so every process sees the same value and a non-finite loss stops them all
at the same step; the stop flag travels in the same collective, and that value is the
step's only read from the device (the running metrics stay there).

The later papers' procedures join the step through one hook object, :class:`StepExtras`:
batch mixing after the batch is prepared (:mod:`~cnntrain.engine.mixing`), the loss
(``train.loss`` ce or bce, :mod:`~cnntrain.engine.losses`), distillation from teacher
checkpoints, and gradient-norm clipping (``train.clip_grad_norm``) after the fp16 grad
scaler has unscaled the gradients, so the bound is on the true gradient.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnntrain.data import BatchPrep
from cnntrain.engine import collectives, distributed
from cnntrain.engine.checkpoint import unwrap
from cnntrain.engine.device import Precision
from cnntrain.engine.ema import WeightAverage
from cnntrain.engine.losses import Teachers, class_loss
from cnntrain.engine.mixing import BatchMix, dominant
from cnntrain.engine.renorm import FilterRenorm
from cnntrain.models import drops


def training_loss(outputs: Any, target: torch.Tensor, label_smoothing: float,
                  aux_weight: float = 0.3, kind: str = "ce") -> torch.Tensor:
    """The ``kind`` loss (ce or bce) of the main output against class indices or mixed
    probabilities; extra outputs are auxiliary heads, weighted by ``train.aux_weight``
    (0.3, as GoogLeNet's paper added them)."""
    if isinstance(outputs, (tuple, list)):
        main, *aux = outputs
        loss = class_loss(main, target, label_smoothing, kind)
        for head in aux:
            loss = loss + aux_weight * class_loss(head, target, label_smoothing, kind)
        return loss
    return class_loss(outputs, target, label_smoothing, kind)


@dataclass
class StepExtras:
    """What the later papers add to a step: mixing, the loss kind, distillation, clipping."""

    mix: BatchMix | None = None
    loss: str = "ce"  # train.loss
    teachers: Teachers | None = None  # train.distill
    clip_grad_norm: float = 0.0  # train.clip_grad_norm; 0 = off

    def mixed(self, x: torch.Tensor, y: torch.Tensor, step: int, part: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mix(x, y, step, part) if self.mix is not None else (x, y)

    def distill(self, outputs: Any, x: torch.Tensor) -> torch.Tensor | float:
        return self.teachers.loss(main_output(outputs), x) if self.teachers is not None else 0.0

    def clip(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        if self.clip_grad_norm > 0:
            scaler.unscale_(optimizer)  # a no-op when the scaler is off
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm)


def main_output(outputs: Any) -> torch.Tensor:
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


class FitStep:
    """Callable: ``(uint8 images, targets) -> (main logits, device targets, mean loss)``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 prep: BatchPrep, precision: Precision, device: torch.device, *,
                 label_smoothing: float = 0.0, accumulate: int = 1, aux_weight: float = 0.3,
                 env: distributed.DistEnv = distributed.SINGLE, ema: WeightAverage | None = None,
                 seed: int = 0, extras: StepExtras | None = None, renorm_first_conv: float = 0.0) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.prep, self.precision, self.device = prep, precision, device
        self.smoothing, self.accumulate, self.env = label_smoothing, max(1, accumulate), env
        self.aux_weight, self.ema = aux_weight, ema
        self.seed, self.extras = seed, extras or StepExtras()
        # torch.compile of ``model`` (sharing its parameters), run on batches of
        # ``compiled_rows`` samples (None: any); other sizes (an epoch's last short batch)
        # run eagerly, so no shape ever triggers a recompilation (:func:`factory.compile_step`).
        self.compiled: nn.Module | None = None
        self.compiled_rows: int | None = None
        self.renorm = FilterRenorm(unwrap(model), renorm_first_conv) if renorm_first_conv > 0 else None
        self.stepped = False  # did the last call update the weights?
        # Did the fp16 grad scaler skip the last update? A 0-dim tensor on the device (or
        # False): reading it would wait for the GPU, so the loop adds it up unread.
        self.overflowed: torch.Tensor | bool = False
        self.loss: torch.Tensor | None = None  # the last step's mean loss, on the device
        self.stop_everywhere = False  # did any process ask to stop (folded into the loss's collective)?

    def __call__(self, images: torch.Tensor, target: torch.Tensor,
                 check: Callable[[float], bool | None] | None = None, step: int | None = None,
                 stop: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimiser step; ``check(loss)`` runs before the update and may raise, or
        return False to skip the update (``self.stepped`` tells which happened). ``step``
        seeds the model's drop decisions (the same on every process); ``stop`` is this
        process's stop request, shared with the others in the loss's collective."""
        if step is not None:
            # the buffers of draws only a compiled forward reads (eager draws its own)
            drops.reseed(self.seed, step, self.model if self.compiled is not None else None)
        self.optimizer.zero_grad(set_to_none=True)
        n = int(target.shape[0])
        parts = min(self.accumulate, n)
        chunks = zip(images.chunk(parts), target.chunk(parts)) if parts > 1 else [(images, target)]
        logits, targets, total = [], [], None
        for i, (x_host, y_host) in enumerate(chunks):
            with distributed.maybe_no_sync(self.model, sync=i == parts - 1):
                outputs, y, loss = self._forward(x_host, y_host, step or 0, i)
                if parts > 1:
                    loss = loss * (y.shape[0] / n)
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            logits.append(main_output(outputs).detach())
            targets.append(dominant(y))  # mixed targets: accuracy against the dominant label
        # The step's one host read: the guard needs the loss before the update.
        self.loss, loss_value, self.stop_everywhere = collectives.step_scalars(total, stop, self.env)
        if check is not None and check(loss_value) is False:
            self.optimizer.zero_grad(set_to_none=True)
            self.stepped, self.overflowed = False, False
            return logits[0], targets[0], loss_value
        self.extras.clip(self.model, self.optimizer, self.scaler)
        scale = self.scaler._scale.clone() if self.scaler.is_enabled() else None  # noqa: SLF001 - no read
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.stepped = True
        if self.renorm is not None:
            self.renorm()
        self.overflowed = (self.scaler._scale < scale).int() if scale is not None else False  # noqa: SLF001
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        if parts == 1:
            return logits[0], targets[0], loss_value
        return torch.cat(logits), torch.cat(targets), loss_value

    def _forward(self, x_host: torch.Tensor, y_host: torch.Tensor, step: int,
                 part: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One micro-batch's outputs, (possibly mixed) targets and loss."""
        x = self.prep(x_host, train=True)
        y = y_host.to(self.device, non_blocking=True)
        x, y = self.extras.mixed(x, y, step, part)
        with self.precision.autocast(self.device):
            outputs = self._forward_model(x)(x)
            loss = training_loss(outputs, y, self.smoothing, self.aux_weight, self.extras.loss)
            loss = loss + self.extras.distill(outputs, x)
        return outputs, y, loss

    def _forward_model(self, x: torch.Tensor) -> nn.Module:
        if self.compiled is not None and self.compiled_rows in (None, x.shape[0]):
            return self.compiled
        return self.model
