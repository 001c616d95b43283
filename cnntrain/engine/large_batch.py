"""Layer-wise adaptive optimisers for large batches: LARS and LAMB (``optim.name``).

- LARS: You, Gitman, Ginsburg. "Large Batch Training of Convolutional Networks" (2017),
  Algorithm 1: local rate ``eta * ||w|| / (||g|| + beta * ||w||)``, then momentum on
  ``global_lr * local_rate * (g + beta * w)`` (eta = ``optim.trust_coefficient``, beta
  the weight decay).
- LAMB: You et al. "Large Batch Optimization for Deep Learning: Training BERT in 76
  minutes" (ICLR 2020), Algorithm 2: Adam's bias-corrected ratio ``r = m_hat / (sqrt(v_hat)
  + eps)``, then ``w -= lr * ||w|| / ||r + lambda w|| * (r + lambda w)`` (phi the identity).

torch has neither. As in timm's LAMB (which "ResNet strikes back" trained with) and the
usual LARS code, the layer-wise ratio applies to parameter groups with a non-zero weight
decay; groups without decay (norms and biases, ``optim.*_weight_decay = 0``) take the
plain step, and a ratio whose norms are zero is 1. timm's LAMB also clips the global
gradient norm at 1.0 inside the optimiser; here clipping is ``train.clip_grad_norm``.
"""
from __future__ import annotations

import torch


def _trust(weight_norm: torch.Tensor, update_norm: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * ||w|| / ||u||``, or 1 where either norm is zero (no device read)."""
    ok = (weight_norm > 0) & (update_norm > 0)
    return torch.where(ok, scale * weight_norm / update_norm.clamp_min(1e-30), torch.ones_like(weight_norm))


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            wd, eta = group["weight_decay"], group["trust_coefficient"]
            for p in (p for p in group["params"] if p.grad is not None):
                g = p.grad
                if wd:  # Algorithm 1: eta ||w|| / (||g|| + beta ||w||), applied to g + beta w
                    w_norm = p.norm()
                    rate = _trust(w_norm, g.norm() + wd * w_norm, eta)
                    g = (g + wd * p) * rate
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)
        return loss


class LAMB(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            (b1, b2), wd = group["betas"], group["weight_decay"]
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                if wd:
                    r = r + wd * p
                    r = r * _trust(p.norm(), r.norm())
                p.sub_(r, alpha=group["lr"])
        return loss
