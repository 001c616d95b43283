"""Evaluation and ensembling: ``cnntrain eval`` and ``cnntrain ensemble``.

One pass over the data serves every member of an ensemble. Multi-crop evaluation
averages the softmax probabilities of the views (Krizhevsky et al. 2012: 10 crops);
an ensemble averages its members' probabilities (default) or logits.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnntrain.data import BatchPrep, DataBundle, build_data, default_workers, make_loader, recorded, val_loader
from cnntrain.engine import collectives, distributed
from cnntrain.engine.checkpoint import build_from_checkpoint, load_checkpoint
from cnntrain.engine.device import (
    Precision, ahead_to_device, choose_precision, exact_fp32, prepare_cuda, resolve_device,
)
from cnntrain.engine.metrics import Meter
from cnntrain.engine.options import EnsembleOptions, EvalOptions
from cnntrain.engine.paperline import accuracy_ks, accuracy_text, distinct_views, paper_lines
from cnntrain.engine.outputs import Collector
from cnntrain.engine.report import eval_outputs
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe, recipe_from_dict


def member_scores(model: nn.Module, x: torch.Tensor, crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean logits, mean probabilities) over the crops of each image, in float32."""
    out = model(x)
    logits = (out[0] if isinstance(out, (tuple, list)) else out).float()
    if crops:
        logits = logits.view(-1, crops, logits.shape[-1])
        return logits.mean(1), logits.softmax(-1).mean(1)
    return logits, logits.softmax(-1)


@torch.no_grad()
def evaluate(models: list[nn.Module], loader, preps: list[BatchPrep], device: torch.device,
             precision: Precision | list[Precision], ks: tuple[int, ...], combine: str | None = None,
             progress: bool = False, views: int = 0, sink: Collector | None = None) -> tuple[list[Meter], list]:
    """Meters for each model, plus one for their combination when ``combine`` is given;
    and the unreadable samples met on the way. ``precision``: one policy for all models,
    or each model's own (an ensemble's members keep their recipes' autocast). ``views``: rows each model returns per
    image of a 4-d batch (a dense protocol's scales and mirrors); a 5-d batch of crops
    says its own. A ``sink`` also receives every batch's per-member logits and
    probabilities (for reports and saved outputs)."""
    policies = precision if isinstance(precision, list) else [precision] * len(models)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    meters = [Meter(ks) for _ in models] + ([Meter(ks)] if combine else [])
    skipped: list = []
    try:
        batches = ahead_to_device(loader, device)
        for images, target, bad in tqdm(batches, desc="eval", leave=False, disable=None if progress else True):
            skipped += bad
            if images.numel() == 0:
                continue
            crops = images.shape[1] if images.ndim == 5 else views
            y = target.to(device, non_blocking=True)
            all_logits, all_probs = [], []
            for model, prep, meter, policy in zip(models, preps, meters, policies):
                with policy.autocast(device):
                    logits, probs = member_scores(model, prep(images), crops)
                if crops:  # losses stay tensors: the meters add them up on the device
                    meter.update(probs, y, F.nll_loss(probs.clamp_min(1e-12).log(), y))
                else:
                    meter.update(logits, y, F.cross_entropy(logits, y))
                all_logits.append(logits)
                all_probs.append(probs)
            if sink is not None:
                sink.add(all_logits, all_probs, y)
            if combine == "logit":
                logits = torch.stack(all_logits).mean(0)
                meters[-1].update(logits, y, F.cross_entropy(logits, y))
            elif combine == "prob":
                probs = torch.stack(all_probs).mean(0)
                meters[-1].update(probs, y, F.nll_loss(probs.clamp_min(1e-12).log(), y))
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)
    return meters, skipped


# --------------------------------------------------------------------------- commands


def _heads(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The classifier layers: every Linear or Conv2d with ``num_classes`` outputs."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and getattr(m, "out_features", getattr(m, "out_channels", None)) == num_classes]


def _exact(inner):
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False), exact_fp32():
            return inner(x.float())
    return forward


def fp32_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Run the classifier (every Linear or Conv2d with ``num_classes`` outputs) in fp32,
    outside autocast and without TF32: paper-comparison numbers must not depend on
    bf16/fp16/TF32 rounding of the logits (a tie-break, a 0.01-point difference). The body
    keeps the run's precision. Changes ``model`` in place and returns it."""
    for module in _heads(model, num_classes):
        module.forward = _exact(module.forward)
    return model


@contextmanager
def fp32_head_during(model: nn.Module, num_classes: int) -> Iterator[nn.Module]:
    """:func:`fp32_head` for a while (validation of a model that goes on training)."""
    heads = [(m, m.__dict__.get("forward")) for m in _heads(model, num_classes)]
    fp32_head(model, num_classes)
    try:
        yield model
    finally:
        for module, before in heads:
            if before is None:
                del module.forward
            else:
                module.forward = before


def load_member(path: str, device: torch.device) -> tuple[nn.Module, dict, Recipe, Precision]:
    """A checkpoint's model, on ``device`` in the memory format its recipe's precision
    policy sets (the same policy then prepares its inputs), with an fp32 classifier."""
    payload = load_checkpoint(path)
    meta = payload["meta"]
    recipe = recipe_from_dict(meta["recipe"], source=str(path))
    precision = choose_precision(device, recipe.train.amp, recipe.train.channels_last)
    model = build_from_checkpoint(payload, source=str(path)).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return fp32_head(model, len(meta["classes"])), meta, recipe, precision


def _check_classes(path: str, meta: dict, data: DataBundle) -> None:
    if list(meta["classes"]) != list(data.classes):
        ours, theirs = meta["classes"], data.classes
        diff = sorted(set(ours) ^ set(theirs))[:5]
        detail = f"differing: {', '.join(diff)}" if diff else "same names in another order"
        raise CnnTrainError(
            f"{path} was trained on {len(ours)} classes, the data has {len(theirs)} ({detail}); "
            "evaluate on the dataset the checkpoint was trained on"
        )


def protocol_name(crops: int, scales: list[int] | None, flip: bool = False) -> str:
    """How this run measured: e.g. "10-crop", "1-crop at scales 256/384/512", "1-crop
    and its mirror" (eval.flip)."""
    mirror = " and its mirror" if flip and crops == 1 else ""
    if scales:
        return f"{crops}-crop{mirror} at scales {'/'.join(map(str, scales))}"
    return f"{crops}-crop{mirror}"


def preset_of(crops: int, scales: list[int] | None, flip: bool = False) -> str | None:
    """The protocol preset a --crops/--scales run is (see cnntrain.data.protocols), if any;
    ``flip``: eval.flip, the mirrored view averaged in (one crop only)."""
    if scales:
        return None
    if crops == 1 and flip:
        return "center-flip"
    return {1: "center", 10: "10crop"}.get(crops)


@dataclass
class Measured:
    """One checkpoint's measurement on its evaluation set, as `eval` and `eval --protocol`
    both take it: the JSON result, the unreadable files, the top-K list and the saved
    per-image scores (with --report / --save-logits)."""

    result: dict[str, Any]
    skipped: list
    ks: list[int]
    k_note: str | None
    sink: Collector | None


def measure(opts: EvalOptions, env: distributed.DistEnv, dev: torch.device, member: tuple, bundle: DataBundle,
            batch: int, scorer: nn.Module | None = None, views: int = 0) -> Measured:
    """Score ``bundle.val`` with the loaded ``member`` (or ``scorer`` built from it),
    summed over every process."""
    model, meta, recipe, precision = member
    sink = Collector() if opts.report or opts.save_logits else None
    if sink is not None and env.world > 1:
        raise CnnTrainError("--report and --save-logits read every image in one process; drop --nproc/torchrun")
    _check_classes(opts.checkpoint, meta, bundle)
    ks, k_note = accuracy_ks(opts.topk or recipe.eval.topk, bundle.num_classes)
    workers = default_workers(bundle.kind, env.local_world) if opts.workers is None else opts.workers
    loader = val_loader(bundle.val, batch, env.rank, env.world, workers, dev.type == "cuda")
    prep = BatchPrep(tuple(meta["mean"]), tuple(meta["std"]), dev, precision.channels_last)
    (meter,), skipped = evaluate([scorer or model], loader, [prep], dev, precision, ks,
                                 progress=opts.progress and env.is_main, views=views, sink=sink)
    meter = collectives.reduce_meter(meter, env, dev)
    (n_skipped,) = collectives.sum_ints([len(skipped)], env, dev)
    result = meter.result()
    result.update(checkpoint=str(opts.checkpoint), arch=meta["arch"], split=opts.split, skipped=n_skipped,
                  paper=dict(recipe.paper.reported))
    if env.enabled:
        result["processes"] = env.world
    return Measured(result, skipped, ks, k_note, sink)


def finish(m: Measured, opts: EvalOptions, bundle: DataBundle, member: tuple, paper: list[str]) -> dict[str, Any]:
    """The lines after the measurement (K clipped, the paper's number, unreadable files)
    and the saved outputs; returns the JSON result."""
    _, meta, recipe, _ = member
    for line in ([m.k_note] if m.k_note else []) + paper:
        print(line)
    if m.skipped:
        print(f"skipped {len(m.skipped)} unreadable file(s): {', '.join(b.path for b in m.skipped[:5])}")
    elif m.result["skipped"]:
        print(f"skipped {m.result['skipped']} unreadable file(s) on other processes")
    if m.sink is not None:  # the per-image scores are the views' averages
        m.result.update(eval_outputs(m.sink, opts, bundle.val, m.skipped, [(opts.checkpoint, meta, recipe)],
                                     m.result, m.ks[-1]))
    return m.result


def eval_checkpoint(opts: EvalOptions) -> dict[str, Any]:
    path, split = opts.checkpoint, opts.split
    # Several processes under torchrun or `eval --nproc`; every batch has the recipe's crop size.
    env, dev = distributed.setup(opts.device, fixed_shapes=True)
    member = load_member(path, dev)
    _, meta, recipe, _ = member
    crops = opts.crops or recipe.eval.crops
    scales = list(opts.scales if opts.scales is not None else recipe.eval.scales)
    bundle = build_data(recipe, opts.data if opts.data is not None else recorded(meta.get("data")), train=False,
                        crops=crops, split=split, scales=scales)
    m = measure(opts, env, dev, member, bundle, opts.batch_size or recipe.eval.batch_size or recipe.optim.batch_size)
    flip = recipe.eval.flip and crops == 1  # 10 crops hold the mirrors already
    views = crops * max(1, len(scales)) * (2 if flip else 1)
    distinct = distinct_views(bundle.val) if env.is_main and views > 1 else None
    measured = protocol_name(crops, scales, flip)
    m.result.update(crops=crops, scales=scales, protocol=measured, views=views, distinct_views=distinct)
    if distinct is not None and distinct < views:
        measured += f" ({distinct} distinct views: the crops coincide at this image size)"
    print(f"{path}  {meta['arch']}  {split}  {m.result['samples']} images  {measured}  "
          f"{accuracy_text(m.result, m.ks)}  loss {m.result['loss']:.4f}")
    own_view = crops == recipe.eval.crops and scales == list(recipe.eval.scales)  # the recipe's own evaluation
    return finish(m, opts, bundle, member, paper_lines(recipe, bundle, preset_of(crops, scales, flip),
                                                       measured, own_view=own_view))


def ensemble_checkpoints(opts: EnsembleOptions) -> dict[str, Any]:
    paths, topk, combine, crops = opts.checkpoints, opts.topk or 5, opts.combine, opts.crops or 1
    dev = resolve_device(opts.device)
    prepare_cuda(dev, deterministic=False, fixed_shapes=True)
    members = [load_member(p, dev) for p in paths]
    first_meta, first_recipe = members[0][1], members[0][2]
    for path, (_, meta, recipe, _) in zip(paths[1:], members[1:]):
        same_view = (recipe.data.train_size, recipe.data.eval_resize, meta["in_channels"]) == (
            first_recipe.data.train_size, first_recipe.data.eval_resize, first_meta["in_channels"])
        if not same_view:
            raise CnnTrainError(
                f"{path} expects {recipe.data.train_size}px inputs (resize {recipe.data.eval_resize}, "
                f"{meta['in_channels']} channels) but {paths[0]} expects {first_recipe.data.train_size}px "
                f"(resize {first_recipe.data.eval_resize}, {first_meta['in_channels']}); "
                "ensemble members must read the same input views"
            )
    bundle = build_data(first_recipe, opts.data if opts.data is not None else recorded(first_meta.get("data")),
                        train=False, crops=crops)
    for path, (_, meta, _, _) in zip(paths, members):
        _check_classes(path, meta, bundle)
    loader = make_loader(bundle.val, opts.batch_size or first_recipe.eval.batch_size or first_recipe.optim.batch_size,
                         workers=default_workers(bundle.kind) if opts.workers is None else opts.workers,
                         pin_memory=dev.type == "cuda")
    # Each member's inputs in its own memory format, and its forward under its own recipe's autocast.
    preps = [BatchPrep(tuple(m["mean"]), tuple(m["std"]), dev, p.channels_last) for _, m, _, p in members]
    sink = Collector() if opts.report else None
    ks, k_note = accuracy_ks(topk, bundle.num_classes)  # each top-K once, K at most the classes
    meters, skipped = evaluate([m for m, _, _, _ in members], loader, preps, dev, [p for *_, p in members], ks,
                               combine=combine, progress=opts.progress, sink=sink)
    results = []
    for path, (_, meta, _, _), meter in zip(paths, members, meters):
        r = meter.result()
        r.update(checkpoint=str(path), arch=meta["arch"])
        results.append(r)
        print(f"member   {path}  {meta['arch']}  {accuracy_text(r, ks)}  loss {r['loss']:.4f}")
    ens = meters[-1].result()
    print(f"ensemble of {len(paths)} ({combine} average)  {accuracy_text(ens, ks)}  loss {ens['loss']:.4f}  "
          f"on {ens['samples']} images")
    if k_note:
        print(k_note)
    out = {**ens, "combine": combine, "members": results}
    if sink is not None:
        out.update(eval_outputs(sink, opts, bundle.val, skipped, [(p, m, r) for p, (_, m, r, _) in zip(paths, members)],
                                out, ks[-1]))
    return out
