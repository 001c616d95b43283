"""The architecture comparison table of the lecture (AlexNet vs VGG vs GoogLeNet vs
ResNet ...) and Canziani et al. 2017's accuracy-against-operations chart.

Every structural column is read off the built model, never typed in:

- **layers** is the depth as the papers count it: the number of weight layers
  (convolutions and fully connected layers) on the longest path from the input to the
  output, found by following every tensor through one forward pass. So ResNet-18 is 18
  (its three 1x1 projection shortcuts sit on a shorter path) and GoogLeNet 22. The
  **conv** and **FC** columns split that path. Layers inside a gate (a module with
  ``gating = True``, e.g. SENet's squeeze-excitation FCs, whose sigmoid output rescales the
  features) are not layers of the path and not classifier FC layers: SE-ResNet-50 is 50
  deep with one FC layer, as its paper counts it.
- **kernels** are the distinct convolution kernel sizes the forward pass uses, **FC
  widths** the output width of each linear layer in order; **dropout**, **LRN** and
  **BN** say whether the forward pass goes through such a layer (dropout with p > 0).
- **params** are the parameters the inference pass uses (auxiliary heads that only run
  in training are left out, as the papers' counts do, and shown apart: ``7.0M (+6.4M aux
  heads)``) and **MACs** the multiply-
  accumulates of one image at the paper's input size (:mod:`cnntrain.summary`).
- the year comes from the registry; the paper's errors from the recipe with the model's
  name (``paper.reported``), "-" where there is none.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from cnntrain.errors import CnnTrainError
from cnntrain.models import aux_head_params, build_model, check_model_name, list_models, model_info
from cnntrain.plots import compare_chart
from cnntrain.recipe import load_recipe, recipe_names
from cnntrain.summary import human, summarize

_CONV = nn.modules.conv._ConvNd
_WEIGHTED = (_CONV, nn.Linear, nn.Bilinear)


@dataclass
class ArchRow:
    model: str
    year: int
    input_size: int
    weight_layers: int
    conv_layers: int
    fc_layers: int
    kernels: list[str]
    fc_widths: list[int]
    dropout: bool
    lrn: bool
    batchnorm: bool
    params: int
    macs: int
    top1_err: float | None = None
    top5_err: float | None = None
    aux_params: int = 0  # auxiliary training heads, not in params


class _Paths(TorchFunctionMode):
    """Tracks, for every tensor, the most (weight, conv, fc) layers on a path that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, tuple[torch.Tensor, tuple[int, int, int]]] = {}

    def get(self, t: torch.Tensor) -> tuple[int, int, int]:
        entry = self.seen.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else (0, 0, 0)

    def put(self, t: torch.Tensor, depth: tuple[int, int, int]) -> None:
        self.seen[id(t)] = (t, depth)  # the reference keeps ids unique while we run

    def deepest(self, obj: Any) -> tuple[int, int, int]:
        return max((self.get(t) for t in tree_leaves(obj) if isinstance(t, torch.Tensor)), default=(0, 0, 0))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        depth = self.deepest((args, kwargs))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.put(t, max(depth, self.get(t)))
        return out


def structure(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """Walk one eval-mode forward pass of ``model``: depth and the layer kinds it uses."""
    paths = _Paths()
    called: list[nn.Module] = []
    gated = {id(sub) for m in model.modules() if getattr(m, "gating", False) for sub in m.modules()}

    def hook(m: nn.Module, args: Any, out: Any) -> None:
        called.append(m)
        if isinstance(m, _WEIGHTED):
            w, c, f = paths.deepest(args)
            step = 0 if id(m) in gated else 1  # a gate's layers rescale the path, they do not deepen it
            depth = (w + step, c + step * isinstance(m, _CONV), f + step * (not isinstance(m, _CONV)))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    paths.put(t, depth)

    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_size, device=device)
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), paths:
            out = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    weight, conv, fc = paths.deepest(out)
    ran = list(dict.fromkeys(called))  # first-call order, no repeats
    kernels = sorted({tuple(m.kernel_size) for m in ran if isinstance(m, _CONV)},
                     key=lambda k: (-math.prod(k), k))
    names = [type(m).__name__.lower() for m in ran]
    return {
        "weight_layers": weight, "conv_layers": conv, "fc_layers": fc,
        "kernels": [str(k[0]) if len(set(k)) == 1 else "x".join(map(str, k)) for k in kernels],
        "fc_widths": [m.out_features for m in ran if isinstance(m, nn.Linear) and id(m) not in gated],
        "dropout": any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in ran),
        "lrn": any(isinstance(m, nn.LocalResponseNorm) or "localresponse" in n or "lrn" in n
                   for m, n in zip(ran, names)),
        "batchnorm": any(isinstance(m, nn.modules.batchnorm._BatchNorm) or "batchnorm" in n
                         for m, n in zip(ran, names)),
    }


def paper_errors(name: str) -> tuple[float | None, float | None]:
    """(top-1, top-5) error the recipe called ``name`` reports, None where absent."""

    try:
        reported = load_recipe(name).paper.reported
    except CnnTrainError:
        return None, None
    return reported.get("top1_err"), reported.get("top5_err")


def default_models() -> list[str]:
    """Registered ImageNet models that have a recipe of the same name (else all ImageNet ones)."""

    imagenet = [n for n in list_models() if model_info(n).input_size > 64]
    recipes = set(recipe_names())
    return [n for n in imagenet if n in recipes] or imagenet


def compare_model(name: str) -> ArchRow:

    check_model_name(name)
    info = model_info(name)
    classes = info.default_classes
    size = (1 if info.family == "lenet" else 3, info.input_size, info.input_size)
    try:
        with torch.device("meta"):
            model = build_model(name, num_classes=classes)
        shape, summary = structure(model, size), summarize(model, size, name=name)
    except (NotImplementedError, RuntimeError):  # no meta kernel: measure for real
        model = build_model(name, num_classes=classes)
        shape, summary = structure(model, size), summarize(model, size, name=name)
    top1, top5 = paper_errors(name)
    return ArchRow(name, info.year, info.input_size, params=summary.params_run, macs=summary.macs,
                   aux_params=aux_head_params(model), top1_err=top1, top5_err=top5, **shape)


def compare_models(names: list[str] | None = None) -> list[ArchRow]:
    rows = [compare_model(n) for n in (names or default_models())]
    return rows if names else sorted(rows, key=lambda r: (r.year, r.macs))


def to_dicts(rows: list[ArchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def table(rows: list[ArchRow]) -> str:
    head = ("model", "year", "layers", "conv", "kernels", "FC", "FC widths", "dropout", "LRN", "BN",
            "params", "MACs", "top-1 err", "top-5 err")

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    def err(v: float | None) -> str:
        return "-" if v is None else f"{v:g}%"

    body = [(r.model, str(r.year), str(r.weight_layers), str(r.conv_layers), "/".join(r.kernels) or "-",
             str(r.fc_layers), "/".join(map(str, r.fc_widths)) or "-", yes(r.dropout), yes(r.lrn),
             yes(r.batchnorm), human(r.params) + (f" (+{human(r.aux_params)} aux heads)" if r.aux_params else ""),
             human(r.macs), err(r.top1_err), err(r.top5_err))
            for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("layers: weight layers on the longest input-output path (conv + FC); params used at "
                 "inference; MACs per image at the paper's input size; errors: the recipe's paper.reported")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the chart


def plot(rows: list[ArchRow], path: str | Path) -> list[str]:
    """Paper error against MACs, one metric per panel: top-1 error on the left, top-5
    error on the right, each model in every panel its paper gives that number for (so
    top-1 and top-5 never share an axis). Returns the models with neither number."""
    panels = []
    for metric, attr in (("top-1 error", "top1_err"), ("top-5 error", "top5_err")):
        pts = [{"model": r.model, "macs": r.macs, "params": r.params, "err": getattr(r, attr)}
               for r in rows if getattr(r, attr) is not None]
        if pts:
            panels.append((metric, pts))
    skipped = [r.model for r in rows if r.top5_err is None and r.top1_err is None]
    if not panels:
        raise CnnTrainError("--plot: none of these models has a paper error (a recipe of the same "
                            "name with paper.reported top5_err or top1_err); nothing to plot")
    only = {m: [r.model for r in rows if getattr(r, a) is not None and getattr(r, b) is None]
            for m, a, b in (("top-1", "top1_err", "top5_err"), ("top-5", "top5_err", "top1_err"))}
    notes = [f"{m} only: {', '.join(names)}" for m, names in only.items() if names and len(panels) > 1]
    notes += [f"no paper error, not plotted: {', '.join(skipped)}"] if skipped else []
    note = "; ".join(["errors as each recipe's paper.reported gives them", *notes])
    compare_chart(panels, path, note=note)
    return skipped
