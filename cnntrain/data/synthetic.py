"""Synthetic data: random uint8 images and labels of a recipe's shape, for smoke tests
and benchmarks. Each sample is drawn from its own seeded generator, so the dataset is
the same on every run and every worker, and costs no memory."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cnntrain.data.sampler import sample_key


class SyntheticImages(Dataset):
    def __init__(self, samples: int, num_classes: int, channels: int, size: int, seed: int,
                 transform=None) -> None:
        self.samples, self.num_classes = samples, num_classes
        self.channels, self.size, self.seed = channels, size, seed
        self.transform = transform

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, key):
        index, aug_generator = sample_key(key)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        img = torch.randint(0, 256, (self.channels, self.size, self.size), dtype=torch.uint8, generator=gen)
        label = int(torch.randint(0, self.num_classes, (), generator=gen))
        if self.transform is not None:
            img = self.transform(img, aug_generator)
        return img, label
