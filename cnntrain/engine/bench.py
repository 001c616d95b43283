"""Benchmarks behind ``cnntrain bench``: each measures cnntrain and a plain-PyTorch
baseline in the same run, on the same machine, and prints the ratio.

- ``bench data``: training-time images/s of cnntrain's input pipeline (the training
  loader and the on-device batch preparation of a recipe, ``resnet50`` by default:
  random-resized 224 crops and flips) against torchvision's ImageFolder + PIL +
  RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize, with the same
  number of loader workers, over the same JPEGs. Warm-up batches (worker start-up) are
  not timed. On CUDA also the same loader with the JPEGs decoded on the GPU
  (:mod:`~cnntrain.data.gpudecode`).
- ``bench train``: images/s of cnntrain's training step (the same :class:`FitStep`,
  learning-rate update and accuracy bookkeeping ``fit`` runs, under the recipe's
  precision and memory-format policy) on synthetic data, against a bare PyTorch loop
  (same model, batch and SGD; fp32, NCHW), and against a bare loop with the engine's
  settings, which isolates the engine's own overhead. Both sides set the process up as
  ``fit`` does (:func:`~cnntrain.engine.device.prepare_process`: current device, cuDNN
  autotuning, TF32 matmuls) and pay the same synchronisation: cnntrain's step reads its
  loss on the host once (the non-finite guard), and the bare step reads its loss too. On CUDA also the model FLOP
  utilisation against the GPU's named dense bf16 peak (:mod:`~cnntrain.engine.mfu`).
- ``bench data --data CIFAR_ROOT``: the device-resident path against torchvision's
  CIFAR10 pipeline (:mod:`~cnntrain.engine.bench_cifar`).
- ``bench decode``: milliseconds per image in one thread, for the baseline's and
  cnntrain's per-sample work and the JPEG decoding inside them, down to the entropy
  decoding that bounds any libjpeg-based pipeline.
- ``bench make-jpegs``: an ImageFolder of ImageNet-sized JPEGs to run ``bench data`` on.

Runs alternate the contenders (A B A B ...) so that load from other programs affects
both alike, and report the median of each. On CPU the whole benchmark process gets the
engine's CPU tuning (:func:`~cnntrain.engine.device.tune_cpu_process`), baselines
included, so the ratios do not count that tuning in cnntrain's favour.
"""
from __future__ import annotations

import io
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torchvision import datasets
from torchvision import transforms as T
from torchvision.io import decode_jpeg

from cnntrain.data import (EpochSampler, SyntheticSpec, build_data, default_workers, fastjpeg, make_loader,
                           synthetic_spec)
from cnntrain.data.cifar import find_cifar
from cnntrain.data.folder import decode_view
from cnntrain.data.loaders import gpu_decode_loader
from cnntrain.engine import factory
from cnntrain.engine.bench_cifar import bench_data_cifar
from cnntrain.engine.device import prepare_process, resolve_device
from cnntrain.engine.distributed import SINGLE, per_process_batch
from cnntrain.engine.metrics import Meter
from cnntrain.engine.mfu import mfu, train_flops_per_image
from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.engine.optim import LRSchedule
from cnntrain.engine.options import BenchDataOptions, BenchDecodeOptions, BenchTrainOptions
from cnntrain.errors import CnnTrainError
from cnntrain.output import output_folder
from cnntrain.recipe import Recipe, load_recipe

# --------------------------------------------------------------------------- make-jpegs


def _photo_like(rng: np.random.Generator, w: int, h: int):
    """A synthetic 'photo': smooth colour fields, shapes with soft edges, fine texture and
    sensor-like noise, so that JPEG decoding costs what it costs on real photographs."""
    base = Image.fromarray(rng.integers(0, 256, (rng.integers(3, 7), rng.integers(4, 9), 3), dtype=np.uint8))
    img = base.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 20))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 8)))
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    arr = np.asarray(img, dtype=np.int16)
    # Texture: noise at a few scales (grass, fabric, foliage), then per-pixel sensor noise.
    texture = np.zeros((h, w), np.float32)
    for cell in (2, 4, 16):
        small = rng.normal(0, 1, (h // cell + 1, w // cell + 1)).astype(np.float32)
        texture += np.kron(small, np.ones((cell, cell), np.float32))[:h, :w] * (24 / cell ** 0.5)
    noise = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    out = np.clip(arr + texture[..., None] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def make_jpegs(out: Path, count: int = 1000, classes: int = 10, val: int = 0, size: tuple[int, int] = (500, 375),
               quality: int = 90, seed: int = 0) -> dict[str, Any]:
    """Write ``count`` training JPEGs (and ``val`` validation ones) as OUT/train/classK/*.jpg."""
    if count < 1 or classes < 1:
        raise CnnTrainError("--count and --classes must be at least 1")
    output_folder(Path(out), "bench make-jpegs")
    rng = np.random.default_rng(seed)
    total_bytes = 0
    for split, n in (("train", count), ("val", val)):
        for i in range(n):
            folder = out / split / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{split}_{i:06d}.jpg"
            _photo_like(rng, *size).save(path, quality=quality)
            total_bytes += path.stat().st_size
    n = count + val
    print(f"wrote {n} JPEGs ({size[0]}x{size[1]}, quality {quality}, {classes} classes, "
          f"mean {total_bytes / n / 1024:.0f} KiB) under {out}")
    return {"out": str(out), "images": n, "mean_bytes": total_bytes / n}


# --------------------------------------------------------------------------- helpers

# The baseline's view (random-resized 224 crop and flip, no colour noise), whatever the
# recipe trains with, so the two pipelines do the same work.
BASELINE_VIEW = ["augment.crop=resized", "augment.pca_lighting=0.0", "augment.color_jitter=[0.0, 0.0, 0.0]"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- bench data


def _time_loader(loader, consume: Callable[[Any], int], batches: int, warmup: int) -> float:
    """Images/s over ``batches`` batches after ``warmup`` untimed ones, from a fresh
    iterator whose workers are shut down afterwards (so that no contender runs, or sits
    on prefetched batches, while the other is timed)."""
    it = iter(loader)
    try:
        for _ in range(warmup):
            consume(next(it))
        start, images = time.perf_counter(), 0
        for _ in range(batches):
            images += consume(next(it))
        return images / (time.perf_counter() - start)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it


def _reference_loader(root: str, recipe, mean, std, batch_size: int, workers: int,
                      pin: bool) -> torch.utils.data.DataLoader:
    """torchvision's own ImageFolder + RandomResizedCrop + flip + ToTensor + Normalize."""
    aug, size = recipe.augment, recipe.data.train_size
    reference = T.Compose([T.RandomResizedCrop(size, scale=tuple(aug.scale), ratio=tuple(aug.ratio)),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    base_set = datasets.ImageFolder(str(Path(root) / "train"), transform=reference)
    return torch.utils.data.DataLoader(base_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=pin)


def bench_data(opts: BenchDataOptions) -> dict[str, Any]:
    root, batches, batch_size, warmup = opts.root, opts.batches, opts.batch_size, opts.warmup
    if Path(root).is_dir() and find_cifar(Path(root)):
        return bench_data_cifar(opts, _time_loader, _median)
    recipe = load_recipe(opts.recipe or "resnet50", BASELINE_VIEW)
    dev = resolve_device(opts.device)
    prepare_process(dev, fixed_shapes=True)  # as fit sets the process up (minus training's TF32)
    bundle = build_data(recipe, root, train=True)
    if bundle.kind != "folder":
        raise CnnTrainError(f"bench data reads an ImageNet-style folder of images; {root} is {bundle.kind}")
    workers = default_workers("folder") if opts.workers is None else opts.workers
    pin = dev.type == "cuda"
    # The training run's batch preparation (its precision and memory-format policy).
    prep = factory.batch_prep(recipe, dev, bundle.mean, bundle.std)
    size = recipe.data.train_size
    aug = recipe.augment

    # The training loader, minus persistent workers (which only matter between epochs).
    ours_loader = make_loader(bundle.train, batch_size, workers=workers, pin_memory=pin,
                              sampler=EpochSampler(len(bundle.train), seed=0))
    if len(ours_loader) < warmup + batches:
        raise CnnTrainError(f"{root} holds {len(bundle.train)} training images, {len(ours_loader)} batches of "
                            f"{batch_size}; --warmup {warmup} + --batches {batches} need more: write more with "
                            "`cnntrain bench make-jpegs --count N` or lower --batches")

    # Both consumers end with the normalised float batch on the device and read it once,
    # as the first layer of the model would.
    def ours_consume(batch) -> int:
        x = prep(batch[0], train=True)
        float(x.sum())
        return int(x.shape[0])

    base_loader = _reference_loader(root, recipe, bundle.mean, bundle.std, batch_size, workers, pin)

    def base_consume(batch) -> int:
        x = batch[0].to(dev, non_blocking=True)
        float(x.sum())
        return int(x.shape[0])

    gpu_loader = (gpu_decode_loader(bundle.train, batch_size, 0, 1, 0, workers, dev, persistent=False)
                  if dev.type == "cuda" else None)  # a third contender: JPEGs decoded on the GPU
    ours, base, gpu = [], [], []
    for _ in range(opts.repeats):
        base.append(_time_loader(base_loader, base_consume, batches, warmup))
        ours.append(_time_loader(ours_loader, ours_consume, batches, warmup))
        if gpu_loader is not None:
            gpu.append(_time_loader(gpu_loader, ours_consume, batches, warmup))
    result = {"ours_images_per_s": _median(ours), "baseline_images_per_s": _median(base),
              "gpu_decode_images_per_s": _median(gpu) if gpu else None, "gpu_decode_runs": gpu,
              "ours_runs": ours, "baseline_runs": base, "workers": workers, "batch_size": batch_size,
              "batches": batches, "device": str(dev), "images_in_folder": len(bundle.train),
              "crop": f"{aug.crop} {size}", "recipe": recipe.name, "jpeg_decoder": fastjpeg.decoder()}
    result["ratio"] = result["ours_images_per_s"] / result["baseline_images_per_s"]
    _print_data(result, root, opts.repeats)
    return result


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def _print_data(r: dict[str, Any], root: str, repeats: int) -> None:
    size = r["crop"].split()[-1]
    print(f"bench data: {r['images_in_folder']} images in {root}, {r['workers']} loader workers, batch "
          f"{r['batch_size']}, {r['batches']} timed batches x {repeats} rounds, {r['device']}")
    print(f"  baseline  torchvision ImageFolder + PIL + RandomResizedCrop({size}) + flip + ToTensor + "
          f"Normalize: {r['baseline_images_per_s']:8.1f} images/s  (runs: {_runs(r['baseline_runs'])})")
    print(f"  cnntrain  {r['recipe']} training pipeline ({r['crop'].split()[0]} crop {size}, uint8 until the device): "
          f"{r['ours_images_per_s']:8.1f} images/s  (runs: {_runs(r['ours_runs'])})")
    print(f"            JPEG decoding: {r['jpeg_decoder']}")
    if r["gpu_decode_images_per_s"] is not None:
        print(f"  cnntrain  same, JPEGs decoded on the GPU (nvJPEG, data.decode = \"gpu\"): "
              f"{r['gpu_decode_images_per_s']:8.1f} images/s  (runs: {_runs(r['gpu_decode_runs'])}); "
              f"ratio {r['gpu_decode_images_per_s'] / r['baseline_images_per_s']:.2f}x")
    print(f"  ratio     {r['ratio']:.2f}x")


# --------------------------------------------------------------------------- bench decode


def _pil_decode(raw: bytes) -> None:
    with Image.open(io.BytesIO(raw)) as im:
        im.convert("RGB").load()


def _decode_steps(base_set, tf, raws: list[bytes], sizes: list[tuple[int, int]]) -> dict[str, Callable[[int], Any]]:
    """Each timed per-image step of ``bench decode``, by name; the first two are the
    baseline's and cnntrain's whole sample, the last (with the region decoder) the floor."""
    views = [tf.draw(*hw, torch.Generator().manual_seed(i)) for i, hw in enumerate(sizes)]
    steps: dict[str, Callable[[int], Any]] = {
        "baseline sample: PIL + RandomResizedCrop + flip + ToTensor + Normalize": lambda i: base_set[i],
        "cnntrain sample: view drawn from the header, region decode, uint8 resize + flip":
            lambda i: decode_view(raws[i], tf, torch.Generator().manual_seed(i)),
        "decode whole image, PIL (libjpeg-turbo)": lambda i: _pil_decode(raws[i]),
        "decode whole image, torchvision decode_jpeg (libjpeg-turbo)":
            lambda i: decode_jpeg(torch.frombuffer(bytearray(raws[i]), dtype=torch.uint8)),
    }
    if fastjpeg.has_region_decoder():
        steps["decode the crop box only (region decoder)"] = lambda i: fastjpeg.decode_region(raws[i], views[i].box)
        # One pixel of the last row: every row above is entropy-decoded and skipped.
        steps["entropy decoding alone (region decoder, last row only)"] = \
            lambda i: fastjpeg.decode_region(raws[i], (sizes[i][0] - 1, 0, 1, 1))
    return steps


def bench_decode(opts: BenchDecodeOptions) -> dict[str, Any]:
    """Milliseconds per training image in one process on one thread: the baseline's and
    cnntrain's whole per-sample work, and the decoding steps inside them, down to
    libjpeg-turbo's entropy decoding alone (the part no crop or scale can skip), which
    bounds what any libjpeg-based CPU pipeline can gain over the baseline."""
    root, count, repeats = opts.root, opts.count, opts.repeats
    torch.set_num_threads(1)
    recipe = load_recipe("resnet50", BASELINE_VIEW)
    bundle = build_data(recipe, root, train=True)
    if bundle.kind != "folder":
        raise CnnTrainError(f"bench decode reads an ImageNet-style folder of JPEGs; {root} is {bundle.kind}")
    paths = [p for p, _ in bundle.train.samples[:count]]
    raws = [Path(p).read_bytes() for p in paths]
    sizes = [fastjpeg.jpeg_size(r) for r in raws]
    if not raws or None in sizes:
        raise CnnTrainError(f"bench decode needs JPEG files; {root}/train holds other images or none")
    aug = recipe.augment
    reference = T.Compose([T.RandomResizedCrop(224, scale=tuple(aug.scale), ratio=tuple(aug.ratio)),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(bundle.mean, bundle.std)])
    base_set = datasets.ImageFolder(str(Path(root) / "train"), transform=reference)
    steps = _decode_steps(base_set, bundle.train.transform, raws, sizes)
    runs: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            for i in range(min(10, len(raws))):  # warm-up: caches, first calls
                fn(i)
            start = time.perf_counter()
            for i in range(len(raws)):
                fn(i)
            runs[name].append((time.perf_counter() - start) / len(raws) * 1e3)
    ms = {k: _median(v) for k, v in runs.items()}
    names = list(steps)
    result = {"images": len(raws), "ms_per_image": ms, "runs": runs, "jpeg_decoder": fastjpeg.decoder(),
              "sample_ratio": ms[names[0]] / ms[names[1]]}
    print(f"bench decode: {len(raws)} JPEGs of {root}/train, one thread, milliseconds per image "
          f"(median of {repeats} rounds)")
    for name in names:
        print(f"  {ms[name]:7.3f}  {name}")
    print(f"  ratio     baseline sample / cnntrain sample: {result['sample_ratio']:.2f}x")
    floor = names[-1] if fastjpeg.has_region_decoder() else None
    if floor:
        result["ceiling_ratio"] = ms[names[0]] / ms[floor]
        print(f"  ceiling   baseline sample / entropy decoding alone: {result['ceiling_ratio']:.2f}x "
              "(a pipeline that did nothing else)")
    return result


# --------------------------------------------------------------------------- bench train


def _steps_per_s(step: Callable[[], None], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - start)


def _bare_step(recipe: Recipe, dev: torch.device, images: torch.Tensor, target: torch.Tensor,
               spec: SyntheticSpec, channels_last: bool, amp: torch.dtype | None,
               compiled: bool) -> Callable[[], None]:
    """A plain PyTorch training step: the same model (same initial weights) and SGD,
    fed like cnntrain's step (the host's uint8 batch copied to the device and normalised
    there, every step) and synchronised like it (the loss read on the host once per
    step), so the two differ only in what the engine adds."""
    torch.manual_seed(recipe.train.seed)
    m = model_from_recipe(recipe, spec.num_classes, spec.channels).to(dev)
    m = m.to(memory_format=torch.channels_last) if channels_last else m
    m.train()
    net = torch.compile(m) if compiled else m
    o = recipe.optim
    opt = torch.optim.SGD(m.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    mean = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1) * 255
    std = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1) * 255
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)

    def step() -> None:
        x = ((images.to(dev, non_blocking=True).float() - mean) / std).contiguous(memory_format=fmt)
        y = target.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(x)
            loss = F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        float(loss.detach())  # the host read of the loss cnntrain's step makes (its guard), so both wait alike
    return step


def _fixed_batch(batch: int, spec: SyntheticSpec, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded host batch of uint8 images and labels (pinned for CUDA), fed every step."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, spec.channels, spec.size, spec.size), dtype=torch.uint8, generator=gen)
    target = torch.randint(0, spec.num_classes, (batch,), generator=gen)
    if dev.type == "cuda":
        images, target = images.pin_memory(), target.pin_memory()
    return images, target


def bench_train(opts: BenchTrainOptions) -> dict[str, Any]:
    recipe = load_recipe(opts.recipe, list(opts.overrides))
    dev = resolve_device(opts.device)
    prepare_process(dev, recipe.train.deterministic, fixed_shapes=True, training=True)  # as fit does
    batch = opts.batch_size or recipe.optim.batch_size
    per_process_batch(batch, SINGLE, recipe.train.accumulate)  # equal micro-batches, as in fit
    spec = synthetic_spec(recipe)
    images, target = _fixed_batch(batch, spec, dev)

    # cnntrain: the parts `fit` builds (factory.build_run) and the step it runs, with its
    # schedule update and accuracy bookkeeping.
    torch.manual_seed(recipe.train.seed)
    parts = factory.build_run(recipe, dev, num_classes=spec.num_classes, channels=spec.channels, mean=spec.mean,
                              std=spec.std, compile_model=opts.compile)
    schedule = LRSchedule(recipe.schedule, recipe.optim.lr, 1000, 10**9)
    meter = Meter((1,))
    counter = {"step": 0}

    def check(value: float) -> None:
        if not math.isfinite(value):
            raise CnnTrainError(f"loss became {value} in bench train; lower optim.lr")

    def engine_step() -> None:
        schedule.apply(parts.optimizer, counter["step"])
        logits, y, _ = parts.fit_step(images, target, check=check, step=counter["step"])
        counter["step"] += 1
        meter.update(logits, y, parts.fit_step.loss)

    precision = parts.precision
    contenders = {
        "bare": _bare_step(recipe, dev, images, target, spec, False, None, False),
        "bare_same": _bare_step(recipe, dev, images, target, spec, precision.channels_last, precision.amp_dtype,
                                opts.compile),
        "cnntrain": engine_step,
    }
    for fn in contenders.values():  # warm-up: allocator, kernels' first calls, compilation
        for _ in range(opts.warmup):
            fn()
    runs: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(opts.repeats):
        for name, fn in contenders.items():
            runs[name].append(_steps_per_s(fn, opts.steps, dev) * batch)
    med = {k: _median(v) for k, v in runs.items()}
    result = {
        "recipe": recipe.name, "arch": recipe.model.arch, "device": str(dev), "batch_size": batch,
        "input": [spec.channels, spec.size, spec.size],
        "engine_policy": precision.describe() + (", compiled" if opts.compile else ""),
        "cnntrain_images_per_s": med["cnntrain"], "bare_images_per_s": med["bare"],
        "bare_same_settings_images_per_s": med["bare_same"], "runs": runs,
        "speedup": med["cnntrain"] / med["bare"],
        "overhead": 1 - med["cnntrain"] / med["bare_same"],
        "threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        result.update(_utilisation(recipe, spec, dev, med["cnntrain"]))
    _print_train(result, opts)
    return result


def _utilisation(recipe: Recipe, spec: SyntheticSpec, dev: torch.device, images_per_s: float) -> dict[str, Any]:
    """Model FLOP utilisation of the engine's step (:mod:`~cnntrain.engine.mfu`)."""
    model = model_from_recipe(recipe, spec.num_classes, spec.channels).to(dev)
    flops = train_flops_per_image(model, (spec.channels, spec.size, spec.size))
    return {"train_flops_per_image": flops, **mfu(images_per_s, flops, dev)}


def _print_train(r: dict[str, Any], opts: BenchTrainOptions) -> None:
    c, h, w = r["input"]
    print(f"bench train: {r['recipe']} ({r['arch']}), batch {r['batch_size']} of {c}x{h}x{w} synthetic, "
          f"{opts.steps} steps x {opts.repeats} rounds, {r['device']} ({r['threads']} threads)")
    print(f"  baseline  bare PyTorch loop (fp32, NCHW, SGD): {r['bare_images_per_s']:10.1f} images/s  "
          f"(runs: {_runs(r['runs']['bare'])})")
    print(f"  cnntrain  fit step ({r['engine_policy']}): {r['cnntrain_images_per_s']:10.1f} images/s  "
          f"(runs: {_runs(r['runs']['cnntrain'])})")
    print(f"  ratio     {r['speedup']:.2f}x")
    if r.get("peak"):
        util = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"  MFU       {util}: {r['achieved_tflops']:.1f} TFLOP/s achieved (3 x forward FLOPs per image) "
              f"of {r['peak']}")
    print(f"  overhead  {100 * r['overhead']:+.1f}% against a bare loop with the engine's settings "
          f"({r['bare_same_settings_images_per_s']:.1f} images/s; negative: the engine was faster)")
