"""FractalNet: Larsson, Maire, Shakhnarovich. "FractalNet: Ultra-Deep Neural Networks
without Residuals". ICLR 2017.

A fractal block with C columns is f_1(z) = conv(z), f_{C+1}(z) = join(f_C(f_C(z)),
conv(z)): column c (from the shallowest, 0) holds 2^c conv units, and wherever several
columns end at the same depth one join layer merges them by their element-wise mean
(Fig. 1). A conv unit is conv3x3-(dropout)-BN-ReLU (dropout placed as in the authors'
Caffe code). The CIFAR network (§4) is B = 5 blocks of 64, 128, 256, 512, 512
channels, each followed by 2x2 max-pooling (32 -> 1 pixel), then a linear classifier;
its depth is B * 2^(C-1).

Drop-path (§3.1), in training only, drawn once per mini-batch: with probability
``global_ratio`` (0.5) the batch uses global drop-path, a single column chosen at
random for the whole network; otherwise local drop-path, where each join drops each
of its inputs with probability ``p_local`` (0.15), keeping at least one. A dropped
path is not computed. At test time every path runs and joins average all inputs;
setting ``model.eval_column`` (e.g. ``columns - 1``, the paper's "deepest") evaluates
one column alone. ``dropout`` is the per-block step: 0.1 gives the paper's rates
(0%, 10%, 20%, 30%, 40%). Weights start from Glorot uniform (Xavier), as in the paper.

- ``fractalnet``: C = 4 columns, 40 layers: 76.0M parameters (for 10 classes).
- ``fractalnet-20``: C = 3, 20 layers, the network of Table 1: 33.7M parameters. The
  paper states 38.6M for it; no reading of its text reaches that with these channel
  widths (independent reimplementations also get 33.7M).
Paths that drop blocks leave parameters without gradient for that step: under
DistributedDataParallel these models are wrapped with ``find_unused_parameters=True``.
The draws come from :mod:`cnntrain.models.drops`: the same on every process, a function
of (seed, step). In eager training a dropped path is not computed. Under
``torch.compile`` a Python-level decision would break the graph at every draw, so there
the decisions are 0/1 tensors made from the step's shared draws (the ``drop_draws``
buffer, refilled by ``drops.reseed`` before each step; the same on every process):
every path runs and each join averages the paths its mask keeps, with the same
probabilities as in eager mode (global column, local drops, at least one kept). The cost
is the dropped paths' compute, and their BatchNorm statistics being updated in steps
where the paper's path would not run (as compiled stochastic depth does).
"""
from __future__ import annotations

import torch
from torch import nn

from cnntrain.models import drops
from cnntrain.models.registry import register

PAPER = "Larsson, Maire, Shakhnarovich. FractalNet: Ultra-Deep Neural Networks without Residuals. ICLR 2017"
CHANNELS = (64, 128, 256, 512, 512)


def _draw() -> float:
    return drops.uniform()


def conv_unit(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FractalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, columns: int, p_local: float = 0.15, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_columns, self.p_local = columns, p_local
        self.depth = 2 ** (columns - 1)
        self.columns = nn.ModuleList(
            nn.ModuleList(conv_unit(cin if i == 0 else cout, cout, dropout) for i in range(2**c))
            for c in range(columns)
        )

    def _span(self, c: int) -> int:
        """How many depth steps one unit of column c covers."""
        return 2 ** (self.num_columns - 1 - c)

    def _kept(self, n: int) -> list[bool]:
        """Local drop-path: which of a join's n inputs survive (at least one)."""
        if not self.training or n == 1 or self.p_local <= 0:
            return [True] * n
        keep = [_draw() >= self.p_local for _ in range(n)]
        if not any(keep):
            keep[int(_draw() * n)] = True
        return keep

    @property
    def draws_needed(self) -> int:
        """Draws per step for :meth:`masked_forward`: one per input of each join, plus one
        for the "keep one" fallback."""
        return self.depth * (self.num_columns + 1)

    def _keep_mask(self, draws: torch.Tensor, members: list[int], global_on: torch.Tensor,
                   column: torch.Tensor) -> torch.Tensor:
        """Which of a join's inputs survive, as a bool tensor: :meth:`_kept`'s rule (or
        the global column's) applied to this join's row of the step's draws."""
        n = len(members)
        if n == 1 or self.p_local <= 0:
            local = torch.ones(n, dtype=torch.bool, device=draws.device)
        else:
            local = draws[:n] >= self.p_local
            pick = torch.arange(n, device=draws.device) == (draws[-1] * n).long().clamp(max=n - 1)
            local = torch.where(local.any(), local, pick)
        chosen = torch.tensor(members, device=draws.device) == column
        return torch.where(global_on, chosen, local)

    def masked_forward(self, x: torch.Tensor, draws: torch.Tensor, global_on: torch.Tensor,
                       column: torch.Tensor) -> torch.Tensor:
        """Training forward with tensor decisions (compiled): every path runs, each join
        averages the kept ones. ``draws``: (depth, columns + 1) uniforms for this block."""
        current = [x] * self.num_columns
        for t in range(1, self.depth + 1):
            members = [c for c in range(self.num_columns) if t % self._span(c) == 0]
            outs = torch.stack([self.columns[c][t // self._span(c) - 1](current[c]) for c in members])
            keep = self._keep_mask(draws[t - 1], members, global_on, column).to(outs.dtype)
            count = keep.sum()
            kept = (outs * keep.view(-1, *[1] * (outs.ndim - 1))).sum(0) / count.clamp_min(1)
            # A join none of whose inputs is on the global column feeds nothing the output
            # uses; the plain mean keeps real activations (not zeros) in the units after it.
            joined = torch.where(count > 0, kept, outs.mean(0))
            for c in members:
                current[c] = joined
        return joined

    def column_forward(self, x: torch.Tensor, c: int) -> torch.Tensor:
        """Column c alone (global drop-path, or evaluating one column)."""
        for unit in self.columns[c]:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor, column: int | None = None) -> torch.Tensor:
        if column is not None:
            return self.column_forward(x, column)
        current = [x] * self.num_columns  # each column's input at the present depth
        for t in range(1, self.depth + 1):
            members = [c for c in range(self.num_columns) if t % self._span(c) == 0]
            kept = [c for c, k in zip(members, self._kept(len(members))) if k]
            outs = [self.columns[c][t // self._span(c) - 1](current[c]) for c in kept]
            joined = outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)
            for c in members:
                current[c] = joined
        return joined


class FractalNet(drops.SkipsParameters, nn.Module):
    def __init__(self, columns: int = 4, num_classes: int = 10, in_channels: int = 3,
                 channels: tuple[int, ...] = CHANNELS, p_local: float = 0.15, global_ratio: float = 0.5,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if columns < 1:
            raise ValueError(f"columns must be >= 1, got {columns}")
        if not 0.0 <= dropout * (len(channels) - 1) < 1.0:
            raise ValueError(f"dropout is the per-block step ({len(channels)} blocks): "
                             f"{dropout} gives a last-block rate outside [0, 1)")
        self.num_columns, self.global_ratio = columns, global_ratio
        self.eval_column: int | None = None
        self.blocks = nn.ModuleList()
        cin = in_channels
        for b, cout in enumerate(channels):
            self.blocks.append(FractalBlock(cin, cout, columns, p_local, dropout * b))
            cin = cout
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # 1x1 already at 32x32; lets other sizes through
        self.fc = nn.Linear(cin, num_classes)
        # The step's drop draws for compiled training (drops.reseed refills it); not saved.
        self.register_buffer("drop_draws", torch.zeros(2 + sum(b.draws_needed for b in self.blocks)),
                             persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def sample_column(self) -> int | None:
        """Per mini-batch: a column for global drop-path, or None for local drop-path."""
        if self.training and self.global_ratio > 0 and _draw() < self.global_ratio:
            return min(int(_draw() * self.num_columns), self.num_columns - 1)
        return None if self.training else self.eval_column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.compiler.is_compiling():
            return self._masked_forward(x)
        column = self.sample_column()
        for block in self.blocks:
            x = self._pool(block(x, column))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) if x.shape[-1] > 1 and x.shape[-2] > 1 else x  # small inputs stop at 1x1

    def _masked_forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`sample_column`'s and the joins' decisions as tensors from ``drop_draws``."""
        d = self.drop_draws
        global_on = d[0] < self.global_ratio
        column = (d[1] * self.num_columns).long().clamp(max=self.num_columns - 1)
        start = 2
        for block in self.blocks:
            rows = d[start:start + block.draws_needed].view(block.depth, block.num_columns + 1)
            start += block.draws_needed
            x = self._pool(block.masked_forward(x, rows, global_on, column))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("fractalnet", family="fractalnet", paper=PAPER, input_size=32, year=2017)
def fractalnet(num_classes: int = 10, in_channels: int = 3, columns: int = 4, p_local: float = 0.15,
               global_ratio: float = 0.5, dropout: float = 0.0) -> nn.Module:
    return FractalNet(columns, num_classes, in_channels, CHANNELS, p_local, global_ratio, dropout)


@register("fractalnet-20", family="fractalnet", paper=PAPER, input_size=32, year=2017)
def fractalnet_20(num_classes: int = 10, in_channels: int = 3, p_local: float = 0.15,
                  global_ratio: float = 0.5, dropout: float = 0.0) -> nn.Module:
    return FractalNet(3, num_classes, in_channels, CHANNELS, p_local, global_ratio, dropout)
