"""Per-layer summary of any ``nn.Module``: output shapes, activation memory, parameters
and multiply-accumulates, all measured by running the model once, never typed in.

One forward pass of a batch of one (in eval mode, on the ``meta`` device when the model
lives there, so nothing is computed) is watched by forward hooks on every module and by
PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode`:

- **MACs** are the counter's FLOPs / 2 (convolutions and matrix products; a bias add,
  pooling, normalisation and activations are not counted, as the papers do). Each op is
  charged to the innermost module running it, so a parent's own ops (GoogLeNet's concat,
  a functional ``x @ w``) get a row of their own and the rows always add up to the total.
- **Activations** are the values of each layer's output that take new memory. An
  in-place ReLU, dropout at eval and a flatten view share their input's storage and count
  0 (marked ``in-place``/``view``); every storage is counted once, where it first comes
  out of a module. The input image is counted too, as the lecture tables do. The total is
  what one image really holds in a forward pass of this model: for VGG-16 at 224 it is
  15.2M values for the input and the conv/pool/FC outputs (plus 25,088 for the adaptive
  average pool torchvision's layout adds), about 61 MB at float32. CS231n's slide prints
  "24M * 4 bytes ~= 96MB / image", which is not the sum of its own rows (15.2M).
- **weights** are the convolution kernels and linear weight matrices (the lecture's
  "params" column: 1,728 for VGG's first 3x3x3x64 convolution); **params** also count
  biases and normalisation scales and shifts (1,792).

Rows are the leaf modules, or with ``depth=N`` the modules N levels down (depth 1 on
GoogLeNet: one row per inception module), each aggregating its subtree. Sizes in the
table are decimal (1 MB = 10^6 bytes, as the lecture's 96 MB); JSON has exact integers.

Two worked examples from the GoogLeNet paper's motivation are built in
(:data:`EXAMPLES`, ``cnntrain summary inception-naive`` / ``inception-reduced``): an
inception module on a 28x28x256 input with 128 1x1, 192 3x3 and 96 5x5 filters and a
3x3 max pool costs 854M MACs naively, and 271M with 64-filter 1x1 bottlenecks before the
3x3 and 5x5 convolutions and after the pool. CS231n's slide prints 358M for the reduced
module, but its own rows (3 x 28*28*64*256 + 28*28*128*256 + 28*28*192*3*3*64 +
28*28*96*5*5*64) add up to 271,351,808; 358M is what they give if the 3x3 convolution
read 128 channels instead of its bottleneck's 64.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnntrain.errors import CnnTrainError, first_line
from cnntrain.models import build_model, check_model_name, model_info

# --------------------------------------------------------------------------- worked examples


class Branches(nn.Module):
    """Parallel branches on one input, concatenated along the channels (an inception module)."""

    def __init__(self, **branches: nn.Module) -> None:
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)


def inception_naive(cin: int = 256, c1: int = 128, c3: int = 192, c5: int = 96) -> nn.Module:
    """Naive inception module: 1x1, 3x3 and 5x5 convolutions and a 3x3 max pool side by side."""
    return Branches(
        conv1x1=nn.Conv2d(cin, c1, 1),
        conv3x3=nn.Conv2d(cin, c3, 3, padding=1),
        conv5x5=nn.Conv2d(cin, c5, 5, padding=2),
        pool=nn.MaxPool2d(3, stride=1, padding=1),
    )


def inception_reduced(cin: int = 256, c1: int = 128, c3: int = 192, c5: int = 96,
                      reduce3: int = 64, reduce5: int = 64, pool_proj: int = 64) -> nn.Module:
    """Inception module with dimension reduction: 1x1 bottlenecks before the 3x3 and 5x5
    convolutions and a 1x1 projection after the pool."""
    return Branches(
        conv1x1=nn.Conv2d(cin, c1, 1),
        conv3x3=nn.Sequential(nn.Conv2d(cin, reduce3, 1), nn.Conv2d(reduce3, c3, 3, padding=1)),
        conv5x5=nn.Sequential(nn.Conv2d(cin, reduce5, 1), nn.Conv2d(reduce5, c5, 5, padding=2)),
        pool=nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(cin, pool_proj, 1)),
    )


# name -> (builder, input C,H,W); `cnntrain summary NAME` accepts these besides the models.
EXAMPLES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "inception-naive": (inception_naive, (256, 28, 28)),
    "inception-reduced": (inception_reduced, (256, 28, 28)),
}

# --------------------------------------------------------------------------- numbers


def human(n: float) -> str:
    """3.2M, 34.8K, 138M, 15.5G: one decimal below 100 of the unit, none above."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:g}"


def human_bytes(n: float) -> str:
    """Decimal units, as the lecture's "96 MB": 12.8 MB, 553 MB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def shape_text(shape: list[int] | None) -> str:
    """A batch's output shape as the lecture writes it: [1,64,224,224] -> 224x224x64."""
    if not shape:
        return "-"
    dims = list(shape[1:])
    if len(dims) == 3:
        dims = dims[1:] + dims[:1]  # C,H,W -> H,W,C
    return "x".join(map(str, dims)) or "1"


def parse_input(text: str, channels: int) -> tuple[int, int, int]:
    """``3x224x224`` (C x H x W), ``224x224`` or ``224`` (with ``channels``)."""
    try:
        dims = [int(p) for p in text.lower().replace("*", "x").split("x")]
    except ValueError:
        dims = []
    if not dims or len(dims) > 3 or min(dims) < 1:
        raise CnnTrainError(f"--input {text!r}: use CxHxW such as 3x224x224 (or HxW, or one side)")
    if len(dims) == 1:
        dims = [channels, dims[0], dims[0]]
    elif len(dims) == 2:
        dims = [channels, *dims]
    return dims[0], dims[1], dims[2]


# --------------------------------------------------------------------------- results


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int] | None = None  # PyTorch order, batch first (first call)
    output_elements: int = 0
    activations: int = 0  # values of new memory this row's outputs hold
    activation_bytes: int = 0
    weights: int = 0  # convolution kernels and linear weight matrices: params less biases and norm scales
    params: int = 0
    macs: int = 0
    calls: int = 0
    note: str = ""  # in-place, view, own ops, not run

    def __post_init__(self) -> None:
        self._flops = 0
        self._order = 0.0


@dataclass
class Summary:
    model: str
    input_shape: tuple[int, ...]
    depth: int | None
    rows: list[LayerRow] = field(default_factory=list)
    params: int = 0
    weights: int = 0
    param_bytes: int = 0
    params_run: int = 0  # parameters of the modules the forward pass used
    activations: int = 0
    activation_bytes: int = 0
    macs: int = 0

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "input": list(self.input_shape), "depth": self.depth,
            "layers": [asdict(r) for r in self.rows],
            "totals": {"params": self.params, "weights": self.weights, "param_bytes": self.param_bytes,
                       "params_run": self.params_run, "activations": self.activations,
                       "activation_bytes": self.activation_bytes, "macs": self.macs},
        }

    def table(self) -> str:
        head = ("layer", "type", "output", "activations", "memory", "weights", "params", "MACs")
        body = []
        for r in self.rows:
            act = r.note if r.note in ("in-place", "view") and not r.activations else f"{r.activations:,}"
            act = "-" if r.note == "not run" else act
            body.append((r.name, r.type + (f" x{r.calls}" if r.calls > 1 else ""),
                         shape_text(r.output_shape) if r.note != "not run" else "(not run)", act,
                         human_bytes(r.activation_bytes) if r.activation_bytes else "-",
                         f"{r.weights:,}" if r.weights else "-", f"{r.params:,}" if r.params else "-",
                         human(r.macs) if r.macs else "-"))
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        c, h, w = self.input_shape
        out = [f"{self.model}: input {c}x{h}x{w} (CxHxW), batch 1, float32"
               + (f", modules at depth {self.depth}" if self.depth is not None else ""),
               line(head), "  ".join("-" * w for w in widths)]
        out += [line(b) for b in body]
        bias = self.params - self.weights
        run = "" if self.params_run == self.params else f"; {self.params_run:,} used by this forward pass"
        out += ["",
                f"parameters            {self.params:,} ({human(self.params)}) = {self.weights:,} weights + "
                f"{bias:,} biases and norm scales; {human_bytes(self.param_bytes)}{run}",
                f"forward activations   {self.activations:,} values ({human(self.activations)}) = "
                f"{human_bytes(self.activation_bytes)} per image",
                "                      (the input and every new layer output; in-place layers and views "
                "share memory)",
                f"multiply-accumulates  {self.macs:,} ({human(self.macs)})"]
        return "\n".join(out)


# --------------------------------------------------------------------------- measuring


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _base(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _type_text(m: nn.Module) -> str:
    name = type(m).__name__
    k, s = getattr(m, "kernel_size", None), getattr(m, "stride", None)
    if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        k = k if isinstance(k, (tuple, list)) else (k,) * 2
        s = s if isinstance(s, (tuple, list)) else (s,) * 2
        return f"{name} {'x'.join(map(str, k))}/{s[0] if len(set(s)) == 1 else 'x'.join(map(str, s))}"
    return name


_KERNELS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


def _device_of(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def summarize(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224), depth: int | None = None,
              name: str | None = None) -> Summary:
    """Run ``model`` on one zero image of ``input_size`` (C,H,W) and measure every module.

    Rows are leaf modules, or modules ``depth`` levels below the root (each aggregating its
    subtree). The model runs in eval mode (restored afterwards), on its own device: build
    it under ``torch.device("meta")`` to measure without computing.
    """
    if depth is not None and depth < 0:
        raise CnnTrainError(f"--depth must be 0 or more, got {depth}")
    names = {m: n for n, m in model.named_modules()}
    leaf = {m: next(m.children(), None) is None for m in names}

    def parts(n: str) -> list[str]:
        return n.split(".") if n else []

    def unit(m: nn.Module) -> str:
        p = parts(names[m])
        return ".".join(p[:depth]) if depth is not None and len(p) > depth else names[m]

    def whole(m: nn.Module) -> bool:  # a row for the module and its subtree, not just its own ops
        return leaf[m] or (depth is not None and len(parts(names[m])) == depth)

    rows: dict[str, LayerRow] = {}
    for m, n in names.items():
        if unit(m) == n:
            rows[n] = LayerRow(n or "(root)", _type_text(m) if whole(m) else f"{type(m).__name__} (own ops)")
    order = itertools.count(1)
    seen: set[int] = set()
    param_bytes = 0
    for m in names:
        for pname, p in m.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                r = rows[unit(m)]
                r.params += p.numel()
                if pname == "weight" and isinstance(m, _KERNELS):
                    r.weights += p.numel()
                param_bytes += p.numel() * p.element_size()

    counted: dict[int, torch.Tensor] = {}  # storages already charged (kept alive: ids stay unique)
    stack: list[list[Any]] = []
    called: set[nn.Module] = set()
    counter = FlopCounterMode(display=False)

    def charge(r: LayerRow, out: Any) -> None:
        for t in _tensors(out):
            b = _base(t)
            if id(b) not in counted:
                counted[id(b)] = b
                r.activations += b.numel()
                r.activation_bytes += b.numel() * b.element_size()

    def pre(m: nn.Module, args: Any) -> None:
        stack.append([counter.get_total_flops(), 0])

    def post(m: nn.Module, args: Any, out: Any) -> None:
        start, inner = stack.pop()
        total = counter.get_total_flops() - start
        if stack:
            stack[-1][1] += total
        called.add(m)
        r = rows[unit(m)]
        r._flops += total - inner
        charge(r, out)
        if names[m] != unit(m):
            return
        r.calls += 1
        if r.calls == 1:
            r._order = next(order)
            outs, ins = _tensors(out), _tensors(args)
            if outs:
                r.output_shape = list(outs[0].shape)
                r.output_elements = sum(t.numel() for t in outs)
                if any(outs[0] is t for t in ins):
                    r.note = "in-place"
                elif any(_base(outs[0]) is _base(t) for t in ins):
                    r.note = "view"

    c, h, w = input_size
    device = _device_of(model)
    x = torch.zeros(1, c, h, w, device=device)
    result = Summary(name or type(model).__name__, tuple(input_size), depth)
    inp = LayerRow("input", "Input", list(x.shape), x.numel(), calls=1)
    charge(inp, x)
    handles = [h for m in names for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    by_name = {rows[n].name: m for m, n in names.items() if n in rows}
    keep = [inp]
    for r in rows.values():
        r.macs = r._flops // 2
        if r.activations and r.note in ("in-place", "view"):
            r.note = ""  # a later call made new memory (ResNet's ReLU after the residual add)
        if not whole(by_name[r.name]):
            if not (r.macs or r.activations or r.params):
                continue  # a container with nothing of its own
            r.note = "own ops"
        if r.calls == 0:
            if not r.params:
                continue  # unused and parameter-free
            r.note, r._order = "not run", float("inf")
        keep.append(r)
    result.rows = sorted(keep, key=lambda r: r._order)
    result.params = sum(r.params for r in rows.values())
    result.weights = sum(r.weights for r in rows.values())
    result.param_bytes = param_bytes
    used = {id(p): p for m in called for p in m.parameters(recurse=False)}
    result.params_run = sum(p.numel() for p in used.values())
    result.activations = sum(r.activations for r in result.rows)
    result.activation_bytes = sum(r.activation_bytes for r in result.rows)
    result.macs = counter.get_total_flops() // 2
    return result


def default_input(name: str) -> tuple[int, int, int]:
    """The C,H,W a model (or an example) is summarised at: its paper's input size, 3 channels
    (1 for LeNet-5). Unknown names raise the registry's error."""

    if name in EXAMPLES:
        return EXAMPLES[name][1]
    check_model_name(name)
    info = model_info(name)
    return (1 if info.family == "lenet" else 3, info.input_size, info.input_size)


def summarize_model(name: str, input_size: tuple[int, int, int] | None = None, depth: int | None = None,
                    num_classes: int | None = None) -> Summary:
    """Summarise a registered model (or one of :data:`EXAMPLES`) at its paper's input size,
    with 1000 classes for ImageNet models and 10 for 32-pixel ones unless ``num_classes``.

    Built on the meta device (no memory, no arithmetic); a model whose forward cannot run
    there is rebuilt on the CPU.
    """

    size = tuple(input_size or default_input(name))
    if name in EXAMPLES:
        build: Callable[[], nn.Module] = EXAMPLES[name][0]
    else:
        classes = num_classes or model_info(name).default_classes

        def build() -> nn.Module:
            return build_model(name, num_classes=classes)
    try:
        with torch.device("meta"):
            model = build()
        return summarize(model, size, depth, name)
    except (NotImplementedError, RuntimeError):
        pass  # an op without a meta kernel, or data-dependent control flow: measure for real
    try:
        return summarize(build(), size, depth, name)
    except RuntimeError as exc:
        raise CnnTrainError(f"{name} does not run on a {'x'.join(map(str, size))} input: "
                            f"{first_line(exc)}") from None
