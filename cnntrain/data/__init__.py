"""Dataset readers: ``--data`` detection, per-dataset normalisation and class lists (the
loaders are :mod:`cnntrain.data.loaders`). Data knows nothing of models; the engine
joins the two."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from cnntrain.data.cifar import find_cifar, load_cifar
from cnntrain.data.digits import CLASSES as DIGIT_CLASSES
from cnntrain.data.digits import TensorImages, load_digits_split, mean_std
from cnntrain.data import fastjpeg
from cnntrain.data.folder import ImageFolderDataset, Skipped, load_folder
from cnntrain.data.loaders import IN_MEMORY, collate, default_workers, make_loader, train_loader, val_loader
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

LAYOUTS = (
    "  - a CIFAR root: a folder holding cifar-10-batches-py/ or cifar-100-python/ (official python files)\n"
    "  - an ImageNet-style root: train/ and val/ folders of class folders\n"
    "  - the name 'digits' (bundled scikit-learn digits) or 'synthetic' (random images)"
)


@dataclass(frozen=True)
class SyntheticSpec:
    """The shape and statistics of a recipe's synthetic stand-in data: its dataset's
    class count (or ``data.num_classes``), channels and training size, and the mean and
    std of uniform 0-255 noise."""

    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def synthetic_spec(recipe: Recipe) -> SyntheticSpec:
    channels = 1 if recipe.data.dataset == "digits" else 3
    mean, std = STATS["synthetic"]
    return SyntheticSpec(recipe.data.num_classes or DEFAULT_CLASSES[recipe.data.dataset], channels,
                         recipe.data.train_size, tuple(mean[:channels]), tuple(std[:channels]))


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

    @property
    def record(self) -> str:
        """The data as a run records it: the absolute, resolved root, or the bundled name."""
        return self.root or self.kind


BUNDLED = "bundled:"  # --data bundled:digits names the bundled set even where a ./digits folder exists


def recorded(data: str | None) -> str | None:
    """The data a run recorded (an absolute path, or a bundled name) as an unambiguous
    ``--data``: a recorded bundled name means the bundled set, whatever folders the
    current directory holds."""
    return f"{BUNDLED}{data}" if data in IN_MEMORY else data


def detect(data: str | None, recipe: Recipe) -> tuple[str, Path | None]:
    """Which reader ``--data`` asks for: (kind, path). Without ``--data``, the recipe's
    ``data.root`` (what a run recorded), else its dataset when that is bundled."""
    if data is None and recipe.data.root is not None:
        data = recorded(recipe.data.root)
    if data is None:
        if recipe.data.dataset in IN_MEMORY:
            return recipe.data.dataset, None
        raise CnnTrainError(
            f'recipe "{recipe.name}" trains on {recipe.data.dataset}; give --data with one of:\n{LAYOUTS}'
        )
    if data.startswith(BUNDLED) and data[len(BUNDLED):] in IN_MEMORY:
        return data[len(BUNDLED):], None
    if data in IN_MEMORY:
        if Path(data).exists():
            raise CnnTrainError(f"--data {data} names both the bundled {data} set and the folder ./{data}; "
                                f"pass ./{data} for the folder or {BUNDLED}{data} for the bundled set")
        return data, None
    root = Path(data).expanduser().resolve()
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
               split: str = "val", scales: list[int] | None = None, eval_transform=None) -> DataBundle:
    """Readers and transforms for a recipe. ``split`` picks what ``val`` holds for eval;
    ``eval_transform`` replaces the crops/scales view (a test protocol's views)."""
    kind, root = detect(data, recipe)
    train_tf = TrainTransform(recipe.data, recipe.augment) if train else None
    eval_tf = eval_transform or EvalTransform(recipe.data, crops, scales, flip=recipe.eval.flip)
    notes: list[str] = []
    if kind == "digits":
        split_data = load_digits_split()
        classes, channels = list(DIGIT_CLASSES), 1
        mean, std = mean_std(split_data["train"][0])
        train_ds = TensorImages(*split_data["train"], train_tf) if train else None
        val_ds = TensorImages(*split_data[split], eval_tf)
    elif kind == "synthetic":
        spec = synthetic_spec(recipe)
        n, channels, size = spec.num_classes, spec.channels, spec.size
        classes = [f"class{i}" for i in range(n)]
        mean, std = spec.mean, spec.std
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
        found = load_folder(root, recipe.data.val_labels)
        classes, channels = found["classes"], 3
        mean, std = STATS["folder"]
        if not found["val"]:
            notes.append(f"{root}/val is missing or empty: validation is skipped")
        if not fastjpeg.has_region_decoder():
            notes.append("JPEGs are decoded whole: cnntrain's region decoder was not built (libjpeg's headers "
                         "were missing at install); install libjpeg-turbo's development files "
                         "(Debian: libjpeg62-turbo-dev) and reinstall cnntrain for faster loading")
        limit = recipe.data.max_pixels
        train_ds = ImageFolderDataset(found["train"], train_tf, limit) if train else None
        val_ds = ImageFolderDataset(found[split], eval_tf, limit)
    if train_tf is not None:
        train_tf.set_fill(tuple(round(m * 255) for m in mean))
    if train and train_ds is not None and len(train_ds) == 0:
        raise CnnTrainError(f"--data {data}: the training split holds no samples")
    return DataBundle(kind, str(root) if root else None, train_ds, val_ds, classes, channels,
                      tuple(mean), tuple(std), notes)


__all__ = ["BUNDLED", "recorded", "BatchPrep", "DataBundle", "EpochSampler", "Skipped", "build_data", "collate", "default_workers", "detect",
           "make_loader", "shard", "SyntheticSpec", "synthetic_spec", "train_loader", "val_loader"]
