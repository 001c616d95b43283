"""``cnntrain predict``: class labels for image files and folders.

Each image goes through its checkpoint's own evaluation view (the recipe's resize,
centre or 10 crops, test scales, and the training data's mean/std), decoded exactly as
``eval`` decodes it, and the model's softmax (averaged over the crops, as ``eval``
averages them). Several checkpoints (``--with``) average their probabilities like
``cnntrain ensemble --combine prob``; they must share classes and input view.
An unreadable file is reported on its own line and the others go on; the command then
exits with status 1 (all files labelled: 0).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF

from cnntrain.data import BatchPrep, make_loader
from cnntrain.data.folder import ImageFolderDataset, image_files
from cnntrain.data.transforms import EvalTransform
from cnntrain.engine.device import prepare_cuda, resolve_device
from cnntrain.engine.evaluate import load_member, member_scores
from cnntrain.engine.paperline import accuracy_ks
from cnntrain.errors import CnnTrainError
from cnntrain.output import output_file


@dataclass(kw_only=True)
class PredictOptions:
    checkpoint: str
    paths: list[str]
    others: list[str] = field(default_factory=list)  # --with
    topk: int = 5
    batch_size: int = 32
    device: str = "auto"
    workers: int = 0

    def __post_init__(self) -> None:
        if not self.paths:
            raise CnnTrainError("predict: give at least one image or folder")
        if self.topk < 1 or self.batch_size < 1 or self.workers < 0:
            raise CnnTrainError("predict: --topk and --batch-size must be at least 1, --workers at least 0")


def collect_files(paths: list[str]) -> list[str]:
    """Every file named, and every non-hidden file under every folder named, in order."""
    files: list[str] = []
    for given in paths:
        p = Path(given)
        if p.is_file():
            files.append(str(p))
        elif p.is_dir():
            files += image_files(p)
        else:
            raise CnnTrainError(f"predict: {given}: no such file or folder")
    if not files:
        raise CnnTrainError(f"predict: no files under {', '.join(paths)}")
    return files


def _load_members(paths: list[str], dev: torch.device) -> list[tuple]:
    members = [load_member(p, dev) for p in paths]
    for model, *_ in members:
        model.eval()
    _, meta0, recipe0, _ = members[0]
    view0 = (recipe0.data.train_size, recipe0.data.eval_resize, meta0["in_channels"])
    for path, (_, meta, recipe, _) in zip(paths[1:], members[1:]):
        if list(meta["classes"]) != list(meta0["classes"]):
            raise CnnTrainError(f"--with {path}: its classes differ from {paths[0]}'s; members must share classes")
        if (recipe.data.train_size, recipe.data.eval_resize, meta["in_channels"]) != view0:
            raise CnnTrainError(f"--with {path}: its input view differs from {paths[0]}'s (size, resize, channels)")
    return members


@torch.no_grad()
def predict(opts: PredictOptions) -> dict[str, Any]:
    dev = resolve_device(opts.device)
    prepare_cuda(dev, deterministic=False)
    paths = [opts.checkpoint, *opts.others]
    members = _load_members(paths, dev)
    _, meta, recipe, precision = members[0]
    files = collect_files(opts.paths)
    crops, scales = recipe.eval.crops, list(recipe.eval.scales)
    # The label slot carries the file's index, so a batch that lost an unreadable file
    # still says which files its rows are.
    dataset = ImageFolderDataset([(f, i) for i, f in enumerate(files)], EvalTransform(recipe.data, crops, scales))
    loader = make_loader(dataset, opts.batch_size, workers=opts.workers, pin_memory=dev.type == "cuda")
    preps = [BatchPrep(tuple(m["mean"]), tuple(m["std"]), dev, p.channels_last) for _, m, _, p in members]
    rows: dict[int, dict[str, Any]] = {}
    where = {f: i for i, f in enumerate(files)}
    (*_, k), k_note = accuracy_ks(opts.topk, len(meta["classes"]))
    if k_note:
        print(k_note)  # as eval says it: --topk 3 on a 2-class model shows 2
    for images, index, skipped in loader:
        for bad in skipped:
            rows[where[bad.path]] = {"path": bad.path, "error": bad.reason}
        if images.numel() == 0:
            continue
        if meta["in_channels"] == 1 and images.shape[-3] == 3:
            images = TF.rgb_to_grayscale(images)
        multi = images.shape[1] if images.ndim == 5 else 0
        probs = []
        for (model, _, _, _), prep in zip(members, preps):
            with precision.autocast(dev):
                probs.append(member_scores(model, prep(images), multi)[1])
        top = torch.stack(probs).mean(0).topk(k, dim=1)
        for i, p_row, c_row in zip(index.tolist(), top.values.tolist(), top.indices.tolist()):
            rows[i] = {"path": files[i], "top": [{"class": meta["classes"][c], "prob": p} for c, p in zip(c_row, p_row)]}
    predictions = [rows[i] for i in range(len(files))]
    for row in predictions:
        if "error" in row:
            print(f"{row['path']}  error: {row['error']}")
        else:
            print(f"{row['path']}  " + "  ".join(f"{t['class']} ({t['prob']:.3f})" for t in row["top"]))
    unreadable = sum("error" in r for r in predictions)
    if unreadable:
        print(f"{unreadable} of {len(files)} file(s) could not be read")
    return {"checkpoints": paths, "topk": k, "crops": crops, "scales": scales, "unreadable": unreadable,
            "predictions": predictions}


def write_csv(result: dict[str, Any], path: str) -> None:
    """One row per file: path, class1, prob1, ... classK, probK, error."""
    k = result["topk"]
    with open(output_file(path, "--csv"), "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", *(f"{c}{i}" for i in range(1, k + 1) for c in ("class", "prob")), "error"])
        for row in result["predictions"]:
            cells = [v for t in row.get("top", []) for v in (t["class"], f"{t['prob']:.6f}")]
            out.writerow([row["path"], *cells, *([""] * (2 * k - len(cells))), row.get("error", "")])

