"""Dataset readers and loaders: ``--data`` detection, per-dataset normalisation, and the
DataLoader settings. Data knows nothing of models; the engine joins the two."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from cnntrain.data.cifar import find_cifar, load_cifar
from cnntrain.data.digits import CLASSES as DIGIT_CLASSES
from cnntrain.data.digits import TensorImages, load_digits_split, mean_std
from cnntrain.data import fastjpeg
from cnntrain.data.fastjpeg import is_hwc
from cnntrain.data.folder import ImageFolderDataset, Skipped, load_folder
from cnntrain.data.sampler import EpochSampler, shard
from cnntrain.data.synthetic import SyntheticImages
from cnntrain.data.transforms import BatchPrep, EvalTransform
from cnntrain.data.views import TrainTransform
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STATS = {
    "imagenet": IMAGENET_STATS,
    "folder": IMAGENET_STATS,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.5, 0.5, 0.5), (0.2887, 0.2887, 0.2887)),  # uniform 0-255 noise
}
DEFAULT_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000, "synthetic": 10}
IN_MEMORY = ("digits", "synthetic")

LAYOUTS = (
    "  - a CIFAR root: a folder holding cifar-10-batches-py/ or cifar-100-python/ (official python files)\n"
    "  - an ImageNet-style root: train/ and val/ folders of class folders\n"
    "  - the name 'digits' (bundled scikit-learn digits) or 'synthetic' (random images)"
)


@dataclass
class DataBundle:
    """Everything the engine needs to know about the data."""

    kind: str  # digits | synthetic | cifar10 | cifar100 | folder
    root: str | None
    train: Dataset | None
    val: Dataset
    classes: list[str]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def detect(data: str | None, recipe: Recipe) -> tuple[str, Path | None]:
    """Which reader ``--data`` asks for: (kind, path)."""
    if data is None:
        if recipe.data.dataset in IN_MEMORY:
            return recipe.data.dataset, None
        raise CnnTrainError(
            f'recipe "{recipe.name}" trains on {recipe.data.dataset}; give --data with one of:\n{LAYOUTS}'
        )
    if data in IN_MEMORY:
        return data, None
    root = Path(data).expanduser()
    if not root.exists():
        raise CnnTrainError(f"--data {data}: no such file or folder. Accepted:\n{LAYOUTS}")
    if not root.is_dir():
        raise CnnTrainError(f"--data {data} is a file, not a folder. Accepted:\n{LAYOUTS}")
    found = find_cifar(root)
    if found:
        return found[0], found[1]
    if (root / "train").is_dir():
        return "folder", root
    raise CnnTrainError(f"--data {data}: nothing cnntrain can read is there. Accepted:\n{LAYOUTS}")


def build_data(recipe: Recipe, data: str | None, *, train: bool = True, crops: int = 1,
               split: str = "val", scales: list[int] | None = None) -> DataBundle:
    """Readers and transforms for a recipe. ``split`` picks what ``val`` holds for eval."""
    kind, root = detect(data, recipe)
    train_tf = TrainTransform(recipe.data, recipe.augment) if train else None
    eval_tf = EvalTransform(recipe.data, crops, scales)
    notes: list[str] = []
    if kind == "digits":
        split_data = load_digits_split()
        classes, channels = list(DIGIT_CLASSES), 1
        mean, std = mean_std(split_data["train"][0])
        train_ds = TensorImages(*split_data["train"], train_tf) if train else None
        val_ds = TensorImages(*split_data[split], eval_tf)
    elif kind == "synthetic":
        n = recipe.data.num_classes or DEFAULT_CLASSES[recipe.data.dataset]
        channels = 1 if recipe.data.dataset == "digits" else 3
        classes = [f"class{i}" for i in range(n)]
        mean, std = (STATS["synthetic"][0][:channels], STATS["synthetic"][1][:channels])
        size = recipe.data.train_size
        counts = {"train": recipe.data.synthetic_train_samples, "val": recipe.data.synthetic_val_samples}
        seeds = {"train": 1, "val": 2}
        train_ds = SyntheticImages(counts["train"], n, channels, size, seeds["train"], train_tf) if train else None
        val_ds = SyntheticImages(counts[split], n, channels, size, seeds[split], eval_tf)
    elif kind in ("cifar10", "cifar100"):
        split_data = load_cifar(kind, root)
        classes, channels = split_data["classes"], 3
        mean, std = STATS[kind]
        train_ds = TensorImages(*split_data["train"], train_tf) if train else None
        val_ds = TensorImages(*split_data[split], eval_tf)
    else:
        found = load_folder(root)
        classes, channels = found["classes"], 3
        mean, std = STATS["folder"]
        if not found["val"]:
            notes.append(f"{root}/val is missing or empty: validation is skipped")
        if not fastjpeg.has_region_decoder():
            notes.append("JPEGs are decoded whole: cnntrain's region decoder was not built (libjpeg's headers "
                         "were missing at install); install libjpeg-turbo's development files "
                         "(Debian: libjpeg62-turbo-dev) and reinstall cnntrain for faster loading")
        train_ds = ImageFolderDataset(found["train"], train_tf) if train else None
        val_ds = ImageFolderDataset(found[split], eval_tf)
    if train and train_ds is not None and len(train_ds) == 0:
        raise CnnTrainError(f"--data {data}: the training split holds no samples")
    return DataBundle(kind, str(root) if root else None, train_ds, val_ds, classes, channels,
                      tuple(mean), tuple(std), notes)


def default_workers(kind: str, processes: int = 1) -> int:
    """Loader processes per training process: none for in-memory data, else the cores
    shared among the ``processes`` training processes on this machine (at most 8 each)."""
    if kind in IN_MEMORY:
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(1, processes)))


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Stack the readable samples; hand the unreadable ones back for counting.

    In a loader worker the batch is stacked straight into shared memory, as torch's
    default collate does, so handing it to the main process copies nothing more.
    """
    good = [(img, label) for img, label in batch if not isinstance(img, Skipped)]
    skipped = [img for img, _ in batch if isinstance(img, Skipped)]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    first = good[0][0]
    # Samples decoded height-width-channel (JPEGs) stay so: the batch is NHWC in memory,
    # an (N, C, H, W) view in channels_last format.
    hwc = first.dim() == 3 and is_hwc(first)
    parts = [img.permute(1, 2, 0) if hwc else img for img, _ in good]
    out = None
    if get_worker_info() is not None:
        numel = first.numel() * len(good)
        storage = first.untyped_storage()._new_shared(numel * first.element_size())
        out = first.new(storage).view(len(good), *parts[0].shape)
    images = torch.stack(parts, out=out)
    if hwc:
        images = images.permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels, skipped


def _worker_init(_worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM/SIGUSR1 to the main process, which stops them
    after writing its checkpoint; a Ctrl-C must not kill them mid-batch first."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, workers: int, sampler=None,
                pin_memory: bool = False, persistent: bool = False) -> DataLoader:
    """A loader of uint8 batches in the sampler's order (sequential when None).

    With an :class:`EpochSampler` every key is (index, augmentation seed), so a sample's
    random view is the same whichever worker draws it; that is what makes
    ``persistent`` workers (kept across epochs) safe for exact resumes."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=persistent and workers > 0,
    )


__all__ = ["BatchPrep", "DataBundle", "EpochSampler", "Skipped", "build_data", "default_workers", "detect",
           "make_loader", "shard"]
