"""Shared fixtures: tiny datasets written by the tests themselves, and a CLI runner."""
from __future__ import annotations

import os

# One intra-op thread per test process: the suite runs as two pytest-xdist workers on
# two cores, and two OpenMP threads per worker oversubscribe them (inception-v4's
# backward at 75 px took 8-27 s with 2 threads under load against 1 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# cuBLAS reads this when CUDA starts, and the cuda-marked tests share one process: the
# first one to touch CUDA would leave a later train.deterministic run unable to set it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.cli import main

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items) -> None:
    """`cuda`-marked tests run only where CUDA is (scripts/gpu-check on a GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run scripts/gpu-check on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_deterministic_mode():
    """A deterministic training run turns torch's deterministic mode on for the whole
    process (and cuDNN's autotuner off); later tests in the same process get it back."""
    mode, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(mode, warn_only=warn)
    torch.backends.cudnn.benchmark = benchmark


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


def write_cifar10(root: Path, per_batch: int = 8, test: int = 10, seed: int = 0) -> Path:
    """The official python layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict:
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(x) for x in rng.integers(0, 10, n)], b"batch_label": b"x"}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(per_batch), fh, protocol=2)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(test), fh, protocol=2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, fh, protocol=2)
    return root


def write_cifar100(root: Path, train: int = 20, test: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", train), ("test", test)):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [int(x) for x in rng.integers(0, 100, n)],
                         "coarse_labels": [int(x) for x in rng.integers(0, 20, n)]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    return root


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 4, size=(40, 30),
                       val_per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                arr[..., c % 3] = 200  # a class-dependent colour so the task is learnable
                fmt = "png" if i % 2 else "jpg"
                Image.fromarray(arr).save(d / f"img{i}.{fmt}")
    return root


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder")
