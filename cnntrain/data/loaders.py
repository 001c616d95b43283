"""DataLoader settings: the seeded, sharded training loader, the evaluation loader,
how many loader processes to start, the loader of undecoded JPEGs for GPU decoding
(:mod:`cnntrain.data.gpudecode`), and the collate that stacks uint8 samples and hands
unreadable ones back for counting.

Under several processes the training set is shuffled per epoch by a seeded permutation
and sharded (padded to equal shards, as DistributedSampler does); the validation set is
sharded without padding (``indices[rank::world]``) and the processes add up their
counts, so every sample is counted exactly once.

A loader worker that dies (a signal from a native decoder or the OOM killer) ends the
command with a one-line error naming the file it was decoding (:mod:`cnntrain.data.inflight`)
and its other workers are killed, so the process always exits: every loader of
:func:`make_loader` does this itself (fit, eval, predict, data check, bench alike), and
:func:`workers_guarded` adds fit's advice and stops the workers on every way out.
"""
from __future__ import annotations

import functools
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from cnntrain.data import inflight
from cnntrain.data.fastjpeg import is_hwc
from cnntrain.data.folder import ImageFolderDataset, Skipped
from cnntrain.data.gpudecode import BatchDecoder, DecodedBatches, EncodedFolder, collate_encoded
from cnntrain.data.sampler import EpochSampler, shard
from cnntrain.errors import CnnTrainError

IN_MEMORY = ("digits", "synthetic")


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


def _worker_init(folder: str, worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM/SIGUSR1 to the main process, which stops them
    after writing its checkpoint; a Ctrl-C must not kill them mid-batch first. Each notes
    the file it decodes in ``folder`` (see inflight)."""
    inflight.start(folder, worker_id)
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class WorkerDied(CnnTrainError):
    """A loader worker died (see :func:`_raise_if_dead`); ``then`` is what to do after
    moving the file out (fit continues with --resume auto)."""

    def __init__(self, dead: str, then: str = " and run again") -> None:
        super().__init__(f"a data-loading process died: {dead}. A native decoder may have crashed on that file: "
                         f"move it out of the data folder (or lower data.max_pixels){then}")
        self.dead = dead


def _raise_if_dead(loader: DataLoader, exc: RuntimeError) -> None:
    """Turn torch's "DataLoader worker exited unexpectedly" into a one-line error, after
    killing the loader's other workers: they ignore SIGTERM (see _worker_init), so left
    alone they would hold interpreter exit for ever."""
    dead = inflight.worker_death(loader, exc)
    if dead:
        inflight.shutdown(loader)
        raise WorkerDied(dead) from None


class _Guarded:
    """A loader's iterator whose worker deaths become :class:`WorkerDied`; anything else
    (``_shutdown_workers``, ``len``) is the wrapped iterator's."""

    def __init__(self, loader: DataLoader, inner) -> None:
        self._loader, self._inner = loader, inner

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._inner)

    def __next__(self):
        try:
            return next(self._inner)
        except RuntimeError as exc:
            _raise_if_dead(self._loader, exc)
            raise

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class _Loader(DataLoader):
    """A DataLoader that remembers its latest iterator, so its workers can be found
    (for the error) and stopped (at exit) even when it does not keep them across epochs,
    and whose iterators are guarded against dying workers."""

    def __iter__(self):
        try:
            iterator = super().__iter__()  # restarting persistent workers can meet a dead one too
        except RuntimeError as exc:
            _raise_if_dead(self, exc)
            raise
        self._cnntrain_iterator = iterator
        return _Guarded(self, iterator)


def make_loader(dataset: Dataset, batch_size: int, *, workers: int, sampler=None,
                pin_memory: bool = False, persistent: bool = False, collate_fn=collate) -> DataLoader:
    """A loader of uint8 batches in the sampler's order (sequential when None).

    With an :class:`EpochSampler` every key is (index, augmentation seed), so a sample's
    random view is the same whichever worker draws it; that is what makes
    ``persistent`` workers (kept across epochs) safe for exact resumes."""
    folder = tempfile.TemporaryDirectory(prefix="cnntrain-inflight-") if workers > 0 else None
    loader = _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_worker_init, folder.name) if folder else None,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=persistent and workers > 0,
        # Each new iterator draws a base seed; from its own generator it leaves the global
        # RNG alone, which a resumed run restores to where the checkpoint was written (the
        # epoch's iterator was made before that, so a second draw would shift every later one).
        generator=torch.Generator().manual_seed(0),
    )
    loader.inflight_dir = folder  # removed with the loader
    return loader


@contextmanager
def workers_guarded(*loaders: DataLoader | None) -> Iterator[None]:
    """For fit: a dead loader worker's one-line error also says how to continue; the
    workers of ``loaders`` are stopped on every way out."""
    try:
        yield
    except WorkerDied as exc:
        raise WorkerDied(exc.dead, ", then continue with --resume auto") from None
    finally:
        for loader in loaders:
            if loader is not None:
                inflight.shutdown(loader)


def train_loader(dataset: Dataset, batch_size: int, rank: int, world: int, seed: int, workers: int,
                 pin_memory: bool, repeats: int = 1, persistent: bool = True) -> DataLoader:
    """Seeded, sharded, per-sample-seeded training loader; call its sampler's
    ``set_epoch`` each epoch. ``repeats``: repeated augmentation's K (see the sampler).
    ``persistent=False`` starts the workers afresh each epoch, so they see a transform
    changed between epochs (progressive resizing)."""
    sampler = EpochSampler(len(dataset), seed, rank=rank, world=world, repeats=repeats)
    return make_loader(dataset, batch_size, workers=workers, sampler=sampler, pin_memory=pin_memory,
                       persistent=persistent)


def gpu_decode_loader(dataset: ImageFolderDataset, batch_size: int, rank: int, world: int, seed: int,
                      workers: int, device: torch.device, persistent: bool = True, repeats: int = 1) -> DecodedBatches:
    """:func:`train_loader` for ``data.decode = "gpu"``: workers read the bytes and draw
    the views (same sampler, same seeds), the training process decodes on ``device``."""
    sampler = EpochSampler(len(dataset), seed, rank=rank, world=world, repeats=repeats)
    loader = make_loader(EncodedFolder(dataset), batch_size, workers=workers, sampler=sampler, persistent=persistent,
                         collate_fn=collate_encoded)
    return DecodedBatches(loader, BatchDecoder(dataset.transform, device))


def val_loader(dataset: Dataset, batch_size: int, rank: int, world: int, workers: int,
               pin_memory: bool) -> DataLoader:
    """This process's unpadded shard of an evaluation set."""
    return make_loader(shard(dataset, world, rank), batch_size, workers=workers, pin_memory=pin_memory)
