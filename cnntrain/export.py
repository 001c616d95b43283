"""``cnntrain export``: a checkpoint's model in a format other tools read, each file
reloaded after writing and run against the checkpoint's model on a random batch of
another size than the one it was exported with (so a fixed batch would show); the
maximum absolute difference is printed, and one beyond float tolerance is an error.

- ``safetensors``: the weights, with metadata (architecture, classes, input size,
  mean/std, recipe name) as safetensors' string metadata;
- ``torchvision``: a plain state dict that ``torchvision.models.<arch>(num_classes=K)``
  loads, for the architectures torchvision shares (models/torchvision_names.py);
- ``torchscript``: ``torch.jit.trace``; ``exported``: a ``torch.export`` program
  (``.pt2``), batch dimension dynamic;
- ``onnx``: opset 18 through torch's dynamo exporter, batch dimension dynamic, checked
  with ``onnx.checker`` and run with ONNX Runtime (``pip install cnntrain[onnx]``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
import torchvision
from torch import nn

from cnntrain.engine.checkpoint import build_from_checkpoint, load_checkpoint
from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.engine.step import main_output
from cnntrain.errors import CnnTrainError, first_line
from cnntrain.models.torchvision_names import torchvision_name
from cnntrain.output import output_file
from cnntrain.recipe import Recipe, recipe_from_dict

FORMATS = ("safetensors", "torchvision", "torchscript", "exported", "onnx")
ONNX_OPSET = 18
RTOL = 1e-4  # allowed difference, relative to the largest output magnitude (at least 1)


@dataclass(kw_only=True)
class ExportOptions:
    checkpoint: str
    format: str
    out: Path

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise CnnTrainError(f"--format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.format == "exported" and Path(self.out).suffix != ".pt2":
            raise CnnTrainError(f"--out {self.out}: a torch.export program is a .pt2 file (torch.export.load "
                                "reads no other name); e.g. --out model.pt2")


class MainOutput(nn.Module):
    """The model in eval mode returning only its class scores (no auxiliary heads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_output(self.model(x))


@dataclass
class Source:
    model: nn.Module
    meta: dict[str, Any]
    recipe: Recipe
    example: torch.Tensor  # the batch the model is exported with


Runner = Callable[[torch.Tensor], torch.Tensor]


def _safetensors(src: Source, out: Path) -> Runner:
    meta, r = src.meta, src.recipe
    info = {"format": "cnntrain-safetensors-1", "arch": meta["arch"], "classes": json.dumps(meta["classes"]),
            "num_classes": str(len(meta["classes"])), "in_channels": str(meta["in_channels"]),
            "input_size": str(r.data.train_size), "eval_resize": str(r.data.eval_resize),
            "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]), "recipe": r.name}
    safetensors.torch.save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(out), info)
    reloaded = model_from_recipe(r, len(meta["classes"]), meta["in_channels"])
    reloaded.load_state_dict(safetensors.torch.load_file(str(out)))
    return MainOutput(reloaded).eval()


def _torchvision(src: Source, out: Path) -> Runner:
    name = torchvision_name(src.meta["arch"], "export --format torchvision")
    if src.meta["in_channels"] != 3:
        raise CnnTrainError(f"export --format torchvision: torchvision's {name} reads 3 channels, "
                            f"this model {src.meta['in_channels']}")
    torch.save(src.model.state_dict(), out)
    theirs = torchvision.models.get_model(name, weights=None, num_classes=len(src.meta["classes"]))
    theirs.load_state_dict(torch.load(out, weights_only=True))
    return MainOutput(theirs).eval()


def _torchscript(src: Source, out: Path) -> Runner:
    # TorchScript is deprecated in torch >= 2.9 but still what C++/mobile runtimes load; the
    # user asked for it by name, so torch's FutureWarning would only repeat the README.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(MainOutput(src.model).eval(), src.example).save(str(out))
        return torch.jit.load(str(out))


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def _exported(src: Source, out: Path) -> Runner:
    program = torch.export.export(MainOutput(src.model).eval(), (src.example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(out))
    return torch.export.load(str(out)).module()


def _onnx(src: Source, out: Path) -> Runner:
    import onnx  # deferred: the optional `onnx` extra; a missing one is the error below
    import onnxruntime

    torch.onnx.export(MainOutput(src.model).eval(), (src.example,), str(out), dynamo=True,
                      opset_version=ONNX_OPSET, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=_dynamic_batch(), external_data=False, verbose=False)
    onnx.checker.check_model(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


WRITERS: dict[str, Callable[[Source, Path], Runner]] = {
    "safetensors": _safetensors, "torchvision": _torchvision, "torchscript": _torchscript,
    "exported": _exported, "onnx": _onnx,
}


def _source(path: str) -> Source:
    payload = load_checkpoint(path)
    meta = payload["meta"]
    recipe = recipe_from_dict(meta["recipe"], source=str(path))
    model = build_from_checkpoint(payload, source=str(path)).eval()
    size = recipe.data.train_size
    gen = torch.Generator().manual_seed(0)
    return Source(model, meta, recipe, torch.randn(2, meta["in_channels"], size, size, generator=gen))


@torch.no_grad()
def export(opts: ExportOptions) -> dict[str, Any]:
    src = _source(opts.checkpoint)
    output_file(opts.out, "export --out")
    try:
        runner = WRITERS[opts.format](src, opts.out)
    except CnnTrainError:
        raise
    except ImportError as exc:
        raise CnnTrainError(f"export --format {opts.format} needs {exc.name}: pip install 'cnntrain[onnx]'") from None
    except Exception as exc:  # noqa: BLE001 - the exporter's refusal is the user's answer
        raise CnnTrainError(f"export: {src.meta['arch']} cannot be written as {opts.format} "
                            f"({type(exc).__name__}: {first_line(exc)[:300]})") from None
    x = torch.randn(3, *src.example.shape[1:], generator=torch.Generator().manual_seed(1))
    ref = MainOutput(src.model).eval()(x)
    got = runner(x)
    diff = float((got.float() - ref.float()).abs().max())
    tol = RTOL * max(1.0, float(ref.abs().max()))
    print(f"wrote {opts.out} ({opts.format}, {src.meta['arch']}, {len(src.meta['classes'])} classes); "
          f"reloaded and run on a random batch of {x.shape[0]}: max abs diff {diff:.3g} (tolerance {tol:.3g})")
    if not diff <= tol:
        raise CnnTrainError(f"export: {opts.out} reloads with outputs {diff:.3g} away from the checkpoint's "
                            f"(tolerance {tol:.3g}); it is not a faithful copy")
    return {"out": str(opts.out), "format": opts.format, "arch": src.meta["arch"], "max_abs_diff": diff,
            "tolerance": tol}
