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
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.data import BatchPrep
from cnntrain.engine import distributed
from cnntrain.engine.checkpoint import unwrap
from cnntrain.engine.device import Precision
from cnntrain.engine.ema import WeightAverage
from cnntrain.engine.renorm import FilterRenorm
from cnntrain.models import drops


def training_loss(outputs: Any, target: torch.Tensor, label_smoothing: float,
                  aux_weight: float = 0.3) -> torch.Tensor:
    """Cross-entropy of the main output; extra outputs are auxiliary heads, weighted by
    ``train.aux_weight`` (0.3, as GoogLeNet's paper added them)."""
    if isinstance(outputs, (tuple, list)):
        main, *aux = outputs
        loss = F.cross_entropy(main, target, label_smoothing=label_smoothing)
        for head in aux:
            loss = loss + aux_weight * F.cross_entropy(head, target, label_smoothing=label_smoothing)
        return loss
    return F.cross_entropy(outputs, target, label_smoothing=label_smoothing)


def main_output(outputs: Any) -> torch.Tensor:
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


class FitStep:
    """Callable: ``(uint8 images, targets) -> (main logits, device targets, mean loss)``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 prep: BatchPrep, precision: Precision, device: torch.device, *,
                 label_smoothing: float = 0.0, accumulate: int = 1, aux_weight: float = 0.3,
                 env: distributed.DistEnv = distributed.SINGLE, ema: WeightAverage | None = None,
                 seed: int = 0, renorm_first_conv: float = 0.0) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.prep, self.precision, self.device = prep, precision, device
        self.smoothing, self.accumulate, self.env = label_smoothing, max(1, accumulate), env
        self.aux_weight, self.ema = aux_weight, ema
        self.seed = seed
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
            drops.reseed(self.seed, step)
        self.optimizer.zero_grad(set_to_none=True)
        n = int(target.shape[0])
        parts = min(self.accumulate, n)
        chunks = zip(images.chunk(parts), target.chunk(parts)) if parts > 1 else [(images, target)]
        logits, targets, total = [], [], None
        for i, (x_host, y_host) in enumerate(chunks):
            last = i == parts - 1
            with distributed.maybe_no_sync(self.model, sync=last):
                x = self.prep(x_host, train=True)
                y = y_host.to(self.device, non_blocking=True)
                with self.precision.autocast(self.device):
                    outputs = self.model(x)
                    loss = training_loss(outputs, y, self.smoothing, self.aux_weight)
                if parts > 1:
                    loss = loss * (y.shape[0] / n)
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            logits.append(main_output(outputs).detach())
            targets.append(y)
        # The step's one host read: the guard needs the loss before the update.
        self.loss, loss_value, self.stop_everywhere = distributed.step_scalars(total, stop, self.env)
        if check is not None and check(loss_value) is False:
            self.optimizer.zero_grad(set_to_none=True)
            self.stepped, self.overflowed = False, False
            return logits[0], targets[0], loss_value
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
