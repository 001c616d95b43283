"""Training losses: cross-entropy or binary cross-entropy (``train.loss``) on class
indices or on mixed class probabilities, with label smoothing (Szegedy et al. 2016), and
knowledge distillation from cnntrain checkpoints (``train.distill``).

``bce`` is "ResNet strikes back"'s loss (Wightman et al. 2021 §3: binary cross-entropy
on the one-hot, or mixed, targets): the mean over samples and classes of
``BCEWithLogits(logit, y)``, with smoothing as timm applies it, ``y (1 - eps) + eps / C``.

Distillation follows Hinton et al. 2015 and Bag of Tricks (He et al. 2019, knowledge
distillation in §5): ``loss = task_loss + weight * T^2 * CE(softmax(r / T), softmax(z / T))``
with r the teachers' logits and z the student's; with several teachers their softened
probabilities are averaged (an ensemble distilled into one network). Bag of Tricks'
reference code, GluonCV's train_imagenet.py, defaults to ``--temperature 20`` and
``--hard-weight 0.5`` with ``DistillationSoftmaxCrossEntropyLoss`` = 0.5 * CE(label) +
0.5 * T^2 * CE(soft): weight 1 and T = 20 here, up to a factor 2 on the whole loss (the
paper's own text for T could not be read). Teachers see the same (possibly mixed) batch
as the student, re-normalised to their own statistics.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.engine.checkpoint import build_from_checkpoint, load_checkpoint
from cnntrain.errors import CnnTrainError


def class_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, kind: str = "ce") -> torch.Tensor:
    """``kind`` "ce" or "bce" of logits (N, C) against indices (N,) or probabilities (N, C)."""
    if kind == "ce":
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    classes = logits.shape[1]
    probs = target.float() if target.is_floating_point() else F.one_hot(target, classes).float()
    if smoothing:
        probs = probs * (1 - smoothing) + smoothing / classes
    return F.binary_cross_entropy_with_logits(logits.float(), probs)


def distill_loss(student: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * CE(teacher_probs, softmax(student / T))``, the mean over the batch."""
    log_p = F.log_softmax(student.float() / temperature, dim=1)
    return -(teacher_probs * log_p).sum(dim=1).mean() * temperature**2


class Teachers:
    """The ``train.distill`` teachers (frozen, in evaluation mode, on the device), giving
    their averaged softened probabilities for a normalised student batch."""

    def __init__(self, spec: dict[str, Any], classes: list[str] | int, mean: tuple[float, ...],
                 std: tuple[float, ...], device: torch.device) -> None:
        self.weight = float(spec.get("weight", 1.0))
        self.temperature = float(spec.get("temperature", 1.0))
        self.models: list[nn.Module] = []
        self.affine: list[tuple[torch.Tensor, torch.Tensor]] = []
        for path in spec["teachers"]:
            try:
                payload = load_checkpoint(path)
            except CnnTrainError as exc:  # "checkpoint X does not exist" alone hides which key named it
                raise CnnTrainError(f"train.distill.teachers: {exc}; give cnntrain checkpoints (best.pt)") from None
            meta = payload["meta"]
            theirs = list(meta["classes"]) if isinstance(classes, list) else len(meta["classes"])
            if theirs != classes:
                count = len(classes) if isinstance(classes, list) else classes
                raise CnnTrainError(f"train.distill teacher {path} was trained on other classes ({len(meta['classes'])}) "
                                    f"than the student's ({count}); distil from a teacher of the same dataset")
            model = build_from_checkpoint(payload, source=str(path)).to(device).eval().requires_grad_(False)
            self.models.append(model)
            # student-normalised x -> teacher-normalised: (x * s_std + s_mean - t_mean) / t_std
            s_mean, s_std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (mean, std))
            t_mean, t_std = (torch.tensor(meta[k], device=device).view(1, -1, 1, 1) for k in ("mean", "std"))
            self.affine.append((s_std / t_std, (s_mean - t_mean) / t_std))

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for model, (scale, shift) in zip(self.models, self.affine):
            out = model(x * scale + shift)
            out = out[0] if isinstance(out, (tuple, list)) else out
            p = F.softmax(out.float() / self.temperature, dim=1)
            total = p if total is None else total + p
        return total / len(self.models)

    def loss(self, student: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.weight * distill_loss(student, self.probs(x), self.temperature)
