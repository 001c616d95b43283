"""The bundled dataset: scikit-learn's 1,797 real 8x8 handwritten digits (UCI
"Optical Recognition of Handwritten Digits"), split once into a fixed stratified
80/20 train/val split (1,437 / 360), served as 1-channel uint8 images.

The 0-16 grey levels are scaled to 0-255; the transforms resize them to the recipe's
``train_size`` (32 for LeNet-5, whose paper fed 32x32 frames around 20x20 digits).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cnntrain.data.sampler import sample_key

CLASSES = [str(d) for d in range(10)]
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=VAL_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {
        "train": (torch.from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train])),
        "val": (torch.from_numpy(images[idx_val]), torch.from_numpy(labels[idx_val])),
    }


def mean_std(images: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    x = images.float() / 255
    return (float(x.mean()),), (float(x.std()),)


class TensorImages(Dataset):
    """In-memory uint8 images (N, C, H, W) with integer labels and a transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        index, generator = sample_key(key)
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img, generator)
        return img, int(self.labels[index])
