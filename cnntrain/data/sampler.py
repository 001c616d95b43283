"""Resumable, reproducible sample order and augmentation randomness.

Each epoch's order is a permutation drawn from (run seed, epoch) alone, and every sample
carries its own augmentation seed drawn alongside it. A sample's random crop and flip are
therefore a pure function of (seed, epoch, position): the same whatever the number of
loader workers, whichever worker draws it, and after a restart in the middle of an epoch
(``start`` skips the samples already trained on). With several processes each rank takes
every ``world``-th position of the padded permutation, as DistributedSampler does.

The datasets take such a key (``sample_key``) and draw the sample's random view from a
generator seeded with it, never from global RNG state. Evaluation shards are
``indices[rank::world]`` (``shard``): no padding, so every sample is counted once when
the processes add up their counts.

Repeated augmentation (``train.repeated_aug`` = K; Hoffer et al. 2020, Berman et al.
2019, as DeiT's and torchvision's ``RASampler``): each permuted index is repeated K times
in a row, each copy with its own augmentation seed, before the rank-strided sharding, so
the K views of a sample land on K different processes (when there are at least K). An
epoch keeps its length (``per_rank`` samples a process), so it covers about N / K
distinct samples, each K times, as those samplers do; the positions are still a pure
function of (seed, epoch), so mid-epoch resumes stay exact.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler, Subset


class EpochSampler(Sampler):
    """Yields ``(index, augmentation_seed)`` pairs for one rank's share of an epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 repeats: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world, self.repeats = rank, world, max(1, repeats)
        self.epoch, self.start = 0, 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.size / self.world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve epoch ``epoch`` from this rank's ``start``-th sample on."""
        self.epoch, self.start = epoch, start

    def order(self) -> tuple[torch.Tensor, torch.Tensor]:
        perm, seeds, _ = self.draws(0)
        return perm, seeds

    def draws(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's (indices, augmentation seeds, ``k`` uniforms in [0, 1) per sample)
        for the whole epoch. The uniforms come from the same (seed, epoch) generator after
        the order and seeds, so they leave ``order()`` unchanged; batch-wise augmentation
        (:mod:`cnntrain.data.resident`) draws its views from them."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=gen) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.size,), generator=gen)
        if self.repeats > 1:  # K copies in a row, each with a seed of its own
            perm = perm.repeat_interleave(self.repeats)
            seeds = torch.randint(0, 2**62, (perm.numel(),), generator=gen)
        n = perm.numel()
        uniforms = torch.rand((n, k), generator=gen) if k else torch.empty(n, 0)
        total = self.per_rank * self.world
        if total > n:  # pad by wrapping so every rank gets the same count
            extra = total - n
            perm, seeds = torch.cat([perm, perm[:extra]]), torch.cat([seeds, seeds[:extra]])
            uniforms = torch.cat([uniforms, uniforms[:extra]])
        # with repeats, each rank keeps the first per_rank of its stride (the epoch's length)
        pick = slice(self.rank, None, self.world)
        return perm[pick][: self.per_rank], seeds[pick][: self.per_rank], uniforms[pick][: self.per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm, seeds = self.order()
        for index, seed in zip(perm[self.start:].tolist(), seeds[self.start:].tolist()):
            yield index, seed

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def sample_key(key) -> tuple[int, torch.Generator | None]:
    """A dataset key is an index, or (index, augmentation seed) from :class:`EpochSampler`."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


def shard(dataset: Dataset, world: int, rank: int) -> Dataset:
    """Every ``world``-th sample from ``rank`` on, without padding (evaluation)."""
    if world <= 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world))
