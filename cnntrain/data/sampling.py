"""Which samples each process reads, in which order, and with which random view.

:class:`EpochSampler` shuffles with a seeded permutation per epoch (torch's
``DistributedSampler``, so one process and N processes share the code), gives each
process its shard, and pairs every index with an augmentation seed derived from
(seed, epoch, index). The datasets draw a sample's random crop and flip from that seed
alone, so a view does not depend on which worker, process or RNG state produced it: a
run resumed at an epoch boundary sees exactly the views the uninterrupted run would
have seen, and loader workers can stay alive across epochs (``persistent_workers``)
without breaking that.

Evaluation shards are ``indices[rank::world]``: no padding, so every sample is counted
exactly once when the processes add up their counts.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, Subset

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` in ``epoch`` of a run seeded ``seed``."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ epoch) ^ index) >> 1


def sample_key(key) -> tuple[int, torch.Generator | None]:
    """A dataset key is an index, or (index, augmentation seed) from :class:`EpochSampler`."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


class EpochSampler(Sampler):
    """Seeded shuffle + shard of a training set; yields (index, augmentation seed)."""

    def __init__(self, dataset: Dataset, seed: int = 0, world: int = 1, rank: int = 0,
                 shuffle: bool = True) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=False)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed, epoch = self.seed, self.epoch
        for index in self.inner:
            yield index, sample_seed(seed, epoch, index)

    def __len__(self) -> int:
        return len(self.inner)


def shard(dataset: Dataset, world: int, rank: int) -> Dataset:
    """Every ``world``-th sample from ``rank`` on, without padding (evaluation)."""
    if world <= 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world))
