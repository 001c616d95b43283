"""What ``cnntrain eval`` prints beside a measurement: each top-K once, K clipped to the
class count (saying so), and the paper's reported number, only where the two can be laid
side by side (the views averaged are stated, and how many were distinct): the data is the recipe's own (same dataset, same class count) and the run
measured the protocol the number was measured with (``paper.eval_protocols``); otherwise
one line says why it is left out.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from cnntrain.data import DEFAULT_CLASSES, DataBundle
from cnntrain.data.folder import Skipped
from cnntrain.data.protocols import WholeImage
from cnntrain.recipe import UNSTATED, Recipe


def accuracy_ks(k: int, num_classes: int) -> tuple[tuple[int, ...], str | None]:
    """The top-K to measure (1 and K, each once) and a note when K exceeds the classes."""
    kept = min(k, num_classes)
    note = f"top-{k} clipped to top-{kept}: the model has {num_classes} classes" if kept < k else None
    return tuple(sorted({1, kept})), note


def accuracy_text(result: dict[str, Any], ks: tuple[int, ...]) -> str:
    return "  ".join(f"top{k} {result[f'top{k}']:.2f}%" for k in ks)


def own_data_note(recipe: Recipe, bundle: DataBundle) -> str | None:
    """None when ``bundle`` is the recipe's dataset with its class count, else why not."""
    return data_note(recipe, bundle.kind, bundle.num_classes)


def data_note(recipe: Recipe, kind: str, num_classes: int) -> str | None:
    """:func:`own_data_note` for data known by its kind and class count (what a run's
    metrics.jsonl records, for ``cnntrain runs``). The paper's class count is its
    dataset's (10 digits, 1,000 ImageNet classes), not a ``data.num_classes`` a run set:
    a 2-class run of the digits recipe is not the paper's 10-class task."""
    dataset = recipe.data.dataset
    classes = DEFAULT_CLASSES[dataset]
    same = kind == dataset or (kind == "folder" and dataset == "imagenet")
    if same and num_classes == classes:
        return None
    what = "an image folder" if kind == "folder" else kind
    return (f"paper's numbers left out: they are for {dataset} ({classes} classes); "
            f"this data is {what} with {num_classes} classes")


def _errors(numbers: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_err', ' error')} {v:g}%" for k, v in numbers.items())


def paper_lines(recipe: Recipe, bundle: DataBundle, protocol: str | None, measured: str,
                own_view: bool = False) -> list[str]:
    """The paper's numbers for the protocol this run measured (a preset name, or None when
    the run matched none), with ``measured`` describing the run. Numbers whose paper
    states no protocol (``unstated``) go beside the recipe's own evaluation (``own_view``:
    plain ``eval``) only, saying so."""
    reported = recipe.paper.reported
    if not reported:
        return []
    note = own_data_note(recipe, bundle)
    if note:
        return [note]
    source = f" ({recipe.paper.protocol})" if recipe.paper.protocol else ""
    mapping = recipe.paper.eval_protocols
    if not mapping:  # the recipe does not say which protocol measured which number
        return [f"paper{source}: {_errors(reported)}   [this run: {measured}]"]
    if protocol in mapping:
        numbers = {k: reported[k] for k in mapping[protocol]}
        return [f"paper, {protocol}{source}: {_errors(numbers)}   [this run: {measured}]"]
    if UNSTATED in mapping and own_view:
        numbers = {k: reported[k] for k in mapping[UNSTATED]}
        return [f"paper, protocol not stated by the paper{source}: {_errors(numbers)}   [this run: {measured}]"]
    others = [f"--protocol {name}" for name in mapping if name != UNSTATED]
    if UNSTATED in mapping:
        others.append("the recipe's own evaluation (plain `eval`; the paper does not state its protocol)")
    return [f"paper's numbers left out: none was measured like this run ({measured}); "
            f"the paper's are for {', '.join(others)}"]


def distinct_views(dataset: Dataset, transform=None) -> int | None:
    """How many of the first readable sample's views differ: crops that coincide (a
    10-crop of an image no larger than the crop) are one view, counted once. For a dense
    protocol, from the image size (scales that round to one size coincide)."""
    if len(dataset) == 0:
        return None
    img, _ = dataset[0]
    if isinstance(img, Skipped):
        return None
    if isinstance(transform, WholeImage):
        return transform.distinct(*img.shape[-2:])
    if img.ndim != 4:
        return 1
    return int(torch.unique(img.flatten(1), dim=0).shape[0])


def views_text(views: int, distinct: int | None) -> str:
    if distinct is None or distinct == views:
        return f"{views} view{'s' if views > 1 else ''} per image averaged"
    return f"{views} views per image averaged, {distinct} distinct (the others coincide at this image size)"
