"""FractalNet's drop-path under torch.compile: decisions as tensors from the step's shared
draws (no graph breaks), with the same rule as the eager forward."""
from __future__ import annotations

import torch

from cnntrain.models import drops
from cnntrain.models.fractalnet import FractalBlock, FractalNet

SMALL = (4, 4, 4, 4, 4)  # fractalnet-20's 3 columns and 5 blocks, narrow


def _net() -> FractalNet:
    torch.manual_seed(0)
    return FractalNet(3, num_classes=4, channels=SMALL).train()


def test_compiled_training_forward_has_no_graph_breaks():
    model = _net()
    drops.reseed(0, 0, model)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 8, 8))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_reseed_fills_the_draws_the_same_for_the_same_step():
    a, b = _net(), _net()
    drops.reseed(3, 5, a)
    drops.reseed(3, 5, b)
    assert torch.equal(a.drop_draws, b.drop_draws) and a.drop_draws.std() > 0
    drops.reseed(3, 6, b)
    assert not torch.equal(a.drop_draws, b.drop_draws)
    assert "drop_draws" not in a.state_dict()  # checkpoints and torchvision-style dicts unchanged


def _python_decisions(model: FractalNet) -> tuple[int | None, list[list[bool]]]:
    """The eager rule (sample_column, FractalBlock._kept) applied to the same draws."""
    d = model.drop_draws.tolist()
    c = model.num_columns
    column = min(int(d[1] * c), c - 1) if d[0] < model.global_ratio else None
    decisions, start = [], 2
    for block in model.blocks:
        rows = [d[start + i * (c + 1): start + (i + 1) * (c + 1)] for i in range(block.depth)]
        start += block.draws_needed
        for t in range(1, block.depth + 1):
            n = sum(1 for k in range(c) if t % block._span(k) == 0)
            keep = [r >= block.p_local for r in rows[t - 1][:n]] if n > 1 else [True]
            if not any(keep):
                keep[min(int(rows[t - 1][-1] * n), n - 1)] = True
            decisions.append(keep)
    return column, decisions


def test_masked_forward_equals_the_eager_forward_with_the_same_decisions(monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    for step in range(6):  # global and local steps, joins with inputs dropped
        model = _net()
        drops.reseed(11, step, model)
        if step == 0:
            model.drop_draws[0] = 0.9  # local drop-path
            model.drop_draws[2:] = 0.01  # every join drops all inputs: the fallback keeps one
        column, decisions = _python_decisions(model)
        masked = model._masked_forward(x)
        queue = iter(decisions)
        monkeypatch.setattr(model, "sample_column", lambda column=column: column)
        monkeypatch.setattr(FractalBlock, "_kept", lambda self, n: next(queue))
        eager = model(x)
        monkeypatch.undo()
        torch.testing.assert_close(masked, eager, rtol=1e-5, atol=1e-5)
