"""Starting weights for fine-tuning: ``cnntrain fit --init PATH|torchvision:WEIGHTS``
(recipe key ``model.init``).

A weights file is a cnntrain checkpoint, a plain state dict in torchvision/timm layout
(``.pth``/``.pt``, read with ``weights_only=True`` like every checkpoint here), or a
``.safetensors`` file. ``torchvision:NAME`` resolves NAME through torchvision's weights
registry for the recipe's architecture and reads the file from torch hub's cache
(``torch.hub.get_dir()/checkpoints``), where torchvision itself keeps it, so a file the
user already has is used as it is; only when it is absent is a download tried.

Tensors are matched by name and shape. Whatever matches is loaded; the rest of the model
keeps its fresh initialisation (a classifier for another class count, typically), and
one line says so. A file that fills less than half of the model's tensors is another
architecture's, and is an error naming both rather than a silent random start.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torchvision
from torch import nn

from cnntrain.engine.checkpoint import FORMAT, torch_saved
from cnntrain.errors import CnnTrainError, first_line
from cnntrain.models import build_model, list_models, model_info
from cnntrain.models.torchvision_names import torchvision_name

MIN_FILLED = 0.5  # below this share of the model's tensors, the file is another architecture's
NESTED_KEYS = ("state_dict", "model", "model_state", "state_dict_ema")  # where trainers nest weights
# torchvision's DenseNet files keep the old names "norm.1" for "norm1" (as its own loader says)
OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_weights(spec: str, arch: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, the file's architecture when it says) for ``model.init``."""
    if spec.startswith("torchvision:"):
        return torchvision_weights(spec.partition(":")[2], arch), arch
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CnnTrainError(f"--init {spec}: no such file; give a .pth/.pt/.safetensors file, a cnntrain "
                            "checkpoint, or torchvision:WEIGHTS (e.g. torchvision:IMAGENET1K_V1)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    payload = _torch_load(path)
    src_arch = None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        payload, src_arch = payload["model"], payload["meta"]["arch"]
    for key in NESTED_KEYS:
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CnnTrainError(f"--init {spec}: not a state dict (a mapping of names to tensors)")
    # DataParallel/DDP saves prefix every name with "module."
    return {k.removeprefix("module."): v for k, v in payload.items()}, src_arch


def _torch_load(path: Path):
    if not torch_saved(path):
        raise CnnTrainError(f"--init {path}: not a torch.save file (nor .safetensors); give a .pth/.pt state dict, "
                            "a cnntrain checkpoint or a .safetensors file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CnnTrainError(f"--init {path} was refused: it holds more than tensors and plain values, "
                            f"which could run code on load ({first_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as exc:
        raise CnnTrainError(f"--init {path}: not a readable weights file ({first_line(exc)})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return safetensors.torch.load_file(str(path)), meta.get("arch")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CnnTrainError(f"--init {path}: not a readable .safetensors file ({exc})") from None


def torchvision_weights(name: str, arch: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's weights ``name`` for ``arch``, from torch hub's cache."""
    tv_name = torchvision_name(arch, f"--init torchvision:{name}")
    registry = torchvision.models.get_model_weights(tv_name)
    try:
        weights = registry[name]
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in registry)])
        raise CnnTrainError(f"--init torchvision:{name}: {tv_name} has no such weights; its weights: {names}") from None
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(target), progress=False)
        except Exception as exc:  # noqa: BLE001 - offline or refused: the user needs the same advice
            raise CnnTrainError(
                f"--init torchvision:{weights.name}: {target.name} is not in {target.parent} and could not be "
                f"downloaded ({type(exc).__name__}); fetch {weights.url} and put it at {target}"
            ) from None
    state = _torch_load(target)
    if tv_name.startswith("densenet"):
        state = {(m.group(1) + m.group(2) if (m := OLD_DENSENET_KEY.match(k)) else k): v for k, v in state.items()}
    return state


def init_from(model: nn.Module, spec: str, arch: str) -> str:
    """Load ``spec``'s matching tensors into ``model``; returns the one-line summary."""
    state, src_arch = read_weights(spec, arch)
    own = model.state_dict()
    loaded = [k for k, v in own.items() if k in state and state[k].shape == v.shape]
    reshaped = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    ignored = [k for k in state if k not in own]
    if len(loaded) < MIN_FILLED * len(own):
        theirs = src_arch or guess_arch(state) or "an architecture cnntrain does not know"
        if theirs == arch:  # same name, other shapes: the recipe's model options differ from the file's
            raise CnnTrainError(f"--init {spec}: only {len(loaded)} of {len(own)} tensors fit this {arch} by name "
                                f"and shape; check model.options against the model the file was saved from")
        raise CnnTrainError(
            f"--init {spec}: its weights are {theirs}'s, not {arch}'s (only {len(loaded)} of {len(own)} tensors "
            f"match by name and shape); use weights of {arch}, or set model.arch to the file's architecture"
        )
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    parts = [f"init from {spec}: loaded {len(loaded)} of {len(own)} tensors"]
    if reshaped:
        parts.append(f"new: {_describe_reshaped(reshaped, own, state)}, initialised fresh")
    if missing:
        parts.append(f"not in the file, initialised fresh: {_short(missing)}")
    parts.append(f"ignored from the file: {_short(ignored)}" if ignored else "nothing ignored")
    return "; ".join(parts)


def _describe_reshaped(keys: list[str], own: dict, state: dict) -> str:
    """``fc.weight, fc.bias: 1000 → 2 classes`` when only the output width changed."""
    widths = {(state[k].shape[0], own[k].shape[0]) for k in keys}
    same_rest = all(state[k].shape[1:] == own[k].shape[1:] for k in keys)
    if len(widths) == 1 and same_rest:
        (old, new), = widths
        return f"{', '.join(keys)}: {old} → {new} classes"
    return ", ".join(f"{k} {tuple(state[k].shape)} → {tuple(own[k].shape)}" for k in keys)


def _short(keys: list[str], limit: int = 4) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose tensors (names and shapes, the classifier's
    width aside) a state dict fills, if one fills at least 90% of them."""
    best, best_score = None, 0.0
    for name in list_models():
        with torch.device("meta"):
            try:
                own = build_model(name, num_classes=model_info(name).default_classes).state_dict()
            except Exception:  # noqa: BLE001 - a model that needs options cannot be the guess
                continue
        hits = sum(1 for k, v in own.items() if k in state and state[k].shape[1:] == v.shape[1:])
        score = hits / max(1, len(own)) * min(1.0, len(own) / max(1, len(state)))
        if score > best_score:
            best, best_score = name, score
    return best if best_score >= 0.9 else None
