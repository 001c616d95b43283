"""JPEG decoding on the GPU for folder datasets (``data.decode``).

Loader workers read each file's bytes and draw its training view from the JPEG header
(:meth:`~cnntrain.data.views.TrainTransform.draw`, the same draws as the CPU path); the
training process decodes the whole batch at once with nvJPEG through
``torchvision.io.decode_jpeg(list, device="cuda")`` and applies each view (crop, resize,
flip, colour jitter) to the decoded image where it lies, on the GPU. Published figures
put batched nvJPEG near 8,000 ImageNet images/s on one A100 against a few hundred per
CPU core for libjpeg-turbo (NVIDIA DALI's and torchvision's GPU-decoding pages); the GPU
figure of this path is measured by ``scripts/gpu-check`` (``bench data`` with its GPU
column) whenever a GPU machine is lent.

Per-file fallback: files that are not JPEGs (PNG, WebP, ...) are decoded in the worker
by the CPU path, whole; a batch nvJPEG refuses is retried file by file, and each file it
still refuses (CMYK, some progressive JPEGs, damaged data) is decoded on the CPU with the
same view. A file no decoder reads becomes :class:`~cnntrain.data.folder.Skipped`, and is
counted and listed exactly as on the CPU path.

``decode_jpeg`` takes a device, so on CPU the same code runs with libjpeg-turbo: the
tests check it there against the CPU path's own full decode, and on CUDA within a
tolerance (nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few
levels).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from cnntrain.data import fastjpeg
from cnntrain.data.folder import ImageFolderDataset, Skipped, decode_bytes, decode_view, skip_reason
from cnntrain.data.resident import per_image_only
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe


def use_gpu_decode(recipe: Recipe, dataset, device: torch.device) -> bool:
    """``data.decode``: gpu (CUDA and a folder dataset needed), cpu, or auto (gpu on CUDA
    for folder datasets)."""
    mode = recipe.data.decode
    folder = isinstance(dataset, ImageFolderDataset)
    per_image = per_image_only(recipe)
    if mode == "gpu" and per_image:
        raise CnnTrainError(f'data.decode = "gpu": {per_image}; set data.decode = "cpu" or "auto"')
    if per_image:
        return False
    if mode == "gpu":
        if device.type != "cuda":
            raise CnnTrainError('data.decode = "gpu" needs a CUDA device; use --device cuda or data.decode = "cpu"')
        if not folder:
            raise CnnTrainError('data.decode = "gpu" decodes JPEG folders; this dataset is not one '
                                '(remove the key, or set data.decode = "auto")')
    return folder and device.type == "cuda" and mode in ("gpu", "auto")


@dataclass
class Encoded:
    """A JPEG's bytes and the training view drawn for it (from its header)."""

    path: str
    data: torch.Tensor  # uint8 bytes of the file
    view: object
    size: tuple[int, int]


class EncodedFolder(ImageFolderDataset):
    """An :class:`ImageFolderDataset` whose JPEGs come out undecoded (:class:`Encoded`);
    other files come out decoded by the CPU path, unreadable ones as :class:`Skipped`.
    The pixel cap and the in-flight note are the folder's own (a bomb is never handed
    to nvJPEG)."""

    def __init__(self, folder: ImageFolderDataset) -> None:
        super().__init__(folder.samples, folder.transform, folder.max_pixels)

    def load(self, path: str, raw: bytes, generator: torch.Generator | None):
        size = fastjpeg.jpeg_size(raw)
        if size is None:
            return decode_view(raw, self.transform, generator)
        view = self.transform.draw(*size, generator)
        return Encoded(path, torch.frombuffer(bytearray(raw), dtype=torch.uint8), view, size)


def collate_encoded(batch: list) -> tuple[list, torch.Tensor, list[Skipped]]:
    """(samples: Encoded or decoded uint8 images, their labels, the unreadable ones)."""
    good = [(item, label) for item, label in batch if not isinstance(item, Skipped)]
    skipped = [item for item, _ in batch if isinstance(item, Skipped)]
    return [item for item, _ in good], torch.tensor([label for _, label in good], dtype=torch.long), skipped


class BatchDecoder:
    """Decodes a collated batch of :class:`Encoded` samples on ``device`` and applies
    their views there: (uint8 images on the device, labels, skipped files)."""

    def __init__(self, transform, device: torch.device) -> None:
        self.transform, self.device = transform, device

    def _decode_all(self, encoded: list[Encoded]) -> list[torch.Tensor | Exception]:
        """Each file decoded on the device: the batch at once, else one by one."""
        if not encoded:
            return []
        try:
            return list(decode_jpeg([e.data for e in encoded], mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass  # one file spoilt the batch: find it
        out: list[torch.Tensor | Exception] = []
        for e in encoded:
            try:
                out.append(decode_jpeg(e.data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError as exc:
                out.append(exc)
        return out

    def _on_cpu(self, e: Encoded) -> torch.Tensor | Skipped:
        """A file the device's decoder refused, decoded by the CPU path with its view."""
        try:
            img = fastjpeg.channels_last(decode_bytes(e.data.numpy().tobytes()))
        except Exception as exc:  # noqa: BLE001 - no decoder reads it: skipped and listed
            return Skipped(e.path, skip_reason(exc))
        return self.transform.apply(img, e.view, e.size)

    def __call__(self, samples: list, labels: torch.Tensor,
                 skipped: list[Skipped]) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
        encoded = [s for s in samples if isinstance(s, Encoded)]
        decoded = iter(self._decode_all(encoded))
        images, keep, skipped = [], [], list(skipped)
        for i, sample in enumerate(samples):
            if isinstance(sample, Encoded):
                img = next(decoded)
                img = self._on_cpu(sample) if isinstance(img, Exception) else self._view(img, sample)
            else:
                img = sample
            if isinstance(img, Skipped):
                skipped.append(img)
                continue
            images.append(img.to(self.device, non_blocking=True).contiguous())
            keep.append(i)
        if not images:
            return torch.empty(0, dtype=torch.uint8, device=self.device), labels[:0], skipped
        return torch.stack(images), labels[keep], skipped

    def _view(self, img: torch.Tensor, e: Encoded) -> torch.Tensor:
        size = tuple(img.shape[-2:])
        if size != e.size:
            # The header lied (the CPU path redraws too): a view for the real size, drawn
            # from a generator fixed by the file, so the run stays repeatable.
            view = self.transform.draw(*size, torch.Generator().manual_seed(len(e.data)))
            return self.transform.apply(img, view, size)
        return self.transform.apply(img, e.view, e.size)


class DecodedBatches:
    """A loader of :class:`EncodedFolder` batches, decoded by a :class:`BatchDecoder`:
    the training loop's (images, labels, skipped) batches, with the loader's sampler."""

    def __init__(self, loader, decoder: BatchDecoder) -> None:
        self.loader, self.decoder, self.sampler = loader, decoder, loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Skipped]]]:
        it = iter(self.loader)
        try:
            for batch in it:
                yield self.decoder(*batch)
        finally:  # left early (a benchmark round): stop workers that are not kept
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None and not self.loader.persistent_workers:
                shutdown()

