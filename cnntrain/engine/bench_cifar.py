"""``cnntrain bench data`` on a CIFAR root, and ``cnntrain bench make-cifar``.

- ``bench data --data CIFAR_ROOT``: training-time images/s of the device-resident path
  (:mod:`cnntrain.data.resident`: uint8 images on the device, one gather per batch for
  the pad-crop and flip, then the training step's normalisation) against torchvision's
  ``CIFAR10`` dataset + ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` +
  ``ToTensor()`` + ``Normalize()`` in a ``DataLoader(shuffle=True)`` with the loader
  workers the per-sample path would use. Both end holding the normalised float batch on
  the device and read it once. Contenders alternate; medians are reported. On CPU the
  resident contender is timed with one intra-op thread, as each baseline worker runs
  (torch gives DataLoader workers one): its few whole-batch ops in the main process
  otherwise wait at the thread pool's barrier whenever the cores are shared (measured
  0.9x-3.5x with torch's default 2 threads at load 10 on 2 cores, 10.7x-13.9x with 1;
  BENCHMARKS.md). The threads are restored afterwards.
- ``bench make-cifar OUT``: a CIFAR-10 root in the official python-pickle layout, of
  random pixels (a data pipeline's cost does not depend on what the pixels show), that
  both cnntrain's reader and torchvision's read.
"""
from __future__ import annotations

import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets
from torchvision import transforms as T

from cnntrain.data import build_data, default_workers, resident
from cnntrain.data.cifar import CIFAR10_DIR, CIFAR10_TRAIN
from cnntrain.engine import factory
from cnntrain.engine.device import prepare_process, resolve_device
from cnntrain.engine.options import BenchDataOptions
from cnntrain.errors import CnnTrainError
from cnntrain.output import output_folder
from cnntrain.recipe import load_recipe

# The baseline's view (32x32 crop of the 4-pixel zero-padded image, flip), whatever the
# recipe otherwise says, so the two pipelines do the same work.
CIFAR_VIEW = ["augment.crop=pad", "augment.pad=4", "augment.hflip=true", "augment.pca_lighting=0.0",
              "augment.color_jitter=[0.0, 0.0, 0.0]", "data.on_device=on"]
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar(out: Path, count: int = 50_000, test: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Write OUT/cifar-10-batches-py/ (5 training batches sharing ``count`` images,
    test_batch, batches.meta), pickled with str keys as the official files unpickle."""
    if count < 5 or test < 1:
        raise CnnTrainError("--count must be at least 5 (five training batches) and --test at least 1")
    rng = np.random.default_rng(seed)
    folder = output_folder(Path(out), "bench make-cifar") / CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [count // 5 + (i < count % 5) for i in range(5)]
    for name, n in [*zip(CIFAR10_TRAIN, sizes), ("test_batch", test)]:
        batch = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": NAMES, "num_cases_per_batch": sizes[0], "num_vis": 3072}, fh, protocol=2)
    print(f"wrote a CIFAR-10 root of random pixels ({count} train / {test} test images) under {out}")
    return {"out": str(out), "train": count, "test": test}


class _Cifar10AnyFiles(datasets.CIFAR10):
    """torchvision's CIFAR10 reader without the md5 check of the official download, so
    that it reads the root of ``bench make-cifar`` too (``check_integrity`` with no md5
    only checks that the file exists)."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def _baseline_loader(root: Path, recipe, mean, std, batch_size: int, workers: int, pin: bool):
    size, pad = recipe.data.train_size, recipe.augment.pad
    reference = T.Compose([T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    base_set = _Cifar10AnyFiles(str(root), train=True, transform=reference)
    return torch.utils.data.DataLoader(base_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=pin)


@contextmanager
def _intra_op_threads(count: int | None):
    """``torch.set_num_threads(count)`` inside the block (nothing when None), restored after."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_data_cifar(opts: BenchDataOptions, time_loader, median) -> dict[str, Any]:
    """See the module docstring; ``time_loader`` and ``median`` are bench data's own."""
    recipe = load_recipe(opts.recipe or "resnet20", CIFAR_VIEW)
    dev = resolve_device(opts.device)
    prepare_process(dev, fixed_shapes=True)  # as fit sets the process up (minus training's TF32)
    bundle = build_data(recipe, opts.root, train=True)
    if bundle.kind != "cifar10":
        raise CnnTrainError(f"bench data on CIFAR compares with torchvision's CIFAR10; {opts.root} is {bundle.kind}")
    if Path(bundle.root).name != CIFAR10_DIR:
        raise CnnTrainError(f"bench data on CIFAR needs the folder holding {CIFAR10_DIR}/ (torchvision's layout); "
                            f"give its parent, not {opts.root}")
    workers = default_workers(bundle.kind) if opts.workers is None else opts.workers
    batches, batch_size, warmup = opts.batches, opts.batch_size, opts.warmup
    if len(bundle.train) < (warmup + batches) * batch_size:
        raise CnnTrainError(f"{opts.root} holds {len(bundle.train)} training images; --warmup {warmup} + --batches "
                            f"{batches} of {batch_size} need more: lower --batches or write more with "
                            "`cnntrain bench make-cifar OUT --count N`")
    prep = factory.batch_prep(recipe, dev, bundle.mean, bundle.std)
    ours_loader = resident.resident_loader(recipe, bundle.train, dev, batch_size, 0, 1, seed=0)
    base_loader = _baseline_loader(Path(bundle.root).parent, recipe, bundle.mean, bundle.std, batch_size, workers,
                                   dev.type == "cuda")

    def ours_consume(batch) -> int:
        x = prep(batch[0], train=True)
        float(x.sum())
        return int(x.shape[0])

    def base_consume(batch) -> int:
        x = batch[0].to(dev, non_blocking=True)
        float(x.sum())
        return int(x.shape[0])

    ours, base = [], []
    threads = 1 if dev.type == "cpu" else None  # as each baseline worker runs (see the module docstring)
    for _ in range(opts.repeats):
        base.append(time_loader(base_loader, base_consume, batches, warmup))
        with _intra_op_threads(threads):
            ours.append(time_loader(ours_loader, ours_consume, batches, warmup))
            used = torch.get_num_threads()
    result = {"ours_images_per_s": median(ours), "baseline_images_per_s": median(base), "ours_runs": ours,
              "baseline_runs": base, "workers": workers, "batch_size": batch_size, "batches": batches,
              "device": str(dev), "images_in_folder": len(bundle.train), "crop": f"pad {recipe.data.train_size}",
              "recipe": recipe.name, "pipeline": "device-resident",
              "ours_threads": used}
    result["ratio"] = result["ours_images_per_s"] / result["baseline_images_per_s"]
    _print(result, opts)
    return result


def _print(r: dict[str, Any], opts: BenchDataOptions) -> None:
    runs = {k: ", ".join(f"{v:.0f}" for v in r[f"{k}_runs"]) for k in ("ours", "baseline")}
    print(f"bench data: {r['images_in_folder']} CIFAR training images in {opts.root}, batch {r['batch_size']}, "
          f"{r['batches']} timed batches x {opts.repeats} rounds, {r['device']}")
    print(f"  baseline  torchvision CIFAR10 + RandomCrop(32, padding=4) + flip + ToTensor + Normalize, "
          f"{r['workers']} loader workers: {r['baseline_images_per_s']:9.1f} images/s  (runs: {runs['baseline']})")
    threads = f", {r['ours_threads']} intra-op thread{'s' if r['ours_threads'] != 1 else ''}"
    print(f"  cnntrain  device-resident uint8, one indexing op for crop + flip, normalise on the device, no workers"
          f"{threads}: {r['ours_images_per_s']:9.1f} images/s  (runs: {runs['ours']})")
    print(f"  ratio     {r['ratio']:.2f}x")
