"""Frozen parts of a model for fine-tuning: ``train.freeze``.

``train.freeze`` names module prefixes (``["conv1", "layer1"]``), or ``["backbone"]`` for
everything but the classifier (the layers whose output width is the class count). A
frozen parameter gets ``requires_grad = False``, so the optimiser never sees it; a
BatchNorm layer inside a frozen part stays in evaluation mode whatever ``model.train()``
says, so it normalises with, and never updates, the statistics it was loaded with (the
usual practice when fine-tuning detectors and classifiers from ImageNet weights: a
small target set's batch statistics would overwrite them). Frozen tensors therefore
end training bit-identical to where they started (tests/test_finetune.py).
"""
from __future__ import annotations

import types
from dataclasses import dataclass

from torch import nn

from cnntrain.errors import CnnTrainError, did_you_mean

BACKBONE = "backbone"


def classifier_modules(model: nn.Module, num_classes: int) -> list[str]:
    """Names of the layers that produce class scores (Linear or Conv2d, ``num_classes`` wide)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and getattr(m, "out_features", getattr(m, "out_channels", None)) == num_classes]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass
class Freeze:
    prefixes: list[str]
    heads: list[str]  # with "backbone": what stays trainable

    def frozen(self, name: str) -> bool:
        if BACKBONE in self.prefixes and not any(_under(name, h) for h in self.heads):
            return True
        return any(_under(name, p) for p in self.prefixes if p != BACKBONE)

    def hold_statistics(self, model: nn.Module) -> int:
        """Keep every BatchNorm layer of a frozen part in eval mode; returns how many.
        Called again after wrapping (SyncBatchNorm conversion makes new layers)."""
        held = 0
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and self.frozen(name):
                module.train = types.MethodType(_always_eval, module)
                module.train(False)
                held += 1
        return held


def _always_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def apply_freeze(model: nn.Module, prefixes: list[str], num_classes: int) -> tuple[Freeze, str] | None:
    """Freeze ``prefixes`` of ``model``; returns the rule and a one-line summary (None: nothing to freeze)."""
    if not prefixes:
        return None
    names = [n for n, _ in model.named_modules() if n]
    for p in prefixes:
        if p != BACKBONE and p not in names:
            tops = sorted({n.split(".")[0] for n in names})
            raise CnnTrainError(f"train.freeze: {model.__class__.__name__} has no module {p!r}"
                                f"{did_you_mean(p, tops)}; its top-level modules: {', '.join(tops)}, "
                                f"or \"{BACKBONE}\" for all but the classifier")
    rule = Freeze(list(prefixes), classifier_modules(model, num_classes))
    params = list(model.named_parameters())
    frozen = [n for n, p in params if rule.frozen(n.rpartition(".")[0])]
    if len(frozen) == len(params):
        raise CnnTrainError(f"train.freeze = {prefixes} freezes every parameter; leave something to train")
    for name, param in params:
        if name in frozen:
            param.requires_grad_(False)
    held = rule.hold_statistics(model)
    trainable = sorted({n.rpartition(".")[0] for n, _ in params if n not in frozen})
    return rule, (f"freeze {', '.join(prefixes)}: {len(frozen)} of {len(params)} parameter tensors frozen, "
                  f"{held} BatchNorm layers hold their statistics; training {_short(trainable)}")


def _short(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
