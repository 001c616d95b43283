"""ImageNet's validation set as distributed: one flat folder of 50,000 JPEGs
(``ILSVRC2012_val_00000001.JPEG`` ...) and a label file, in either of its two forms:

- ``LOC_val_solution.csv`` (the Kaggle ImageNet Object Localization release): rows
  ``ImageId,PredictionString`` whose string starts with the image's WordNet id;
- the devkit's ``data/ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012_ID per
  line, line i for image i, mapped to WordNet ids by the devkit's ``data/meta.mat``
  (the synsets with no children are the 1,000 classes), read with scipy.

:func:`arrange` hard-links each image into ``OUT/WNID/`` (``cnntrain data imagenet-val``;
no bytes copied, the flat files stay); :func:`flat_samples` reads the flat folder in
place (recipe key ``data.val_labels``).
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import scipy.io

from cnntrain.errors import CnnTrainError

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """{image file stem: WordNet id} from either label file."""
    path = Path(path)
    if not path.is_file():
        raise CnnTrainError(f"--labels {path}: no such file; give LOC_val_solution.csv or the devkit's "
                            f"data/{GROUND_TRUTH}")
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace")  # a binary file is "neither", not a traceback
    try:
        if first.lower().startswith("imageid"):
            return _read_solution_csv(path)
        if first.strip().isdigit():
            return _read_ground_truth(path)
    except (UnicodeDecodeError, ValueError):  # text at first, then bytes or words that are no label
        pass
    raise CnnTrainError(f"--labels {path}: neither LOC_val_solution.csv (a header 'ImageId,PredictionString') "
                        f"nor the devkit's {GROUND_TRUTH} (one class number a line)")


def _read_solution_csv(path: Path) -> dict[str, str]:
    labels = {}
    with open(path, newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            words = (row.get("PredictionString") or "").split()
            if not row.get("ImageId") or not words:
                raise CnnTrainError(f"{path} line {n}: expected 'ImageId,WNID x y x y ...', got {row}")
            labels[row["ImageId"]] = words[0]
    return labels


def _read_ground_truth(path: Path) -> dict[str, str]:
    meta = path.parent / "meta.mat"
    if not meta.is_file():
        raise CnnTrainError(f"{path} numbers classes by ILSVRC2012_ID; the devkit's data/meta.mat maps them to "
                            f"WordNet ids: put it at {meta}")
    synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    labels = {}
    for n, line in enumerate(path.read_text().split(), start=1):
        if int(line) not in wnid:
            raise CnnTrainError(f"{path} line {n}: class {line} is not one of {meta}'s {len(wnid)} classes")
        labels[f"ILSVRC2012_val_{n:08d}"] = wnid[int(line)]
    return labels


def _flat_images(val_dir: Path) -> dict[str, Path]:
    if not val_dir.is_dir():
        what = "is a file, not a folder" if val_dir.exists() else "no such folder"
        raise CnnTrainError(f"{val_dir}: {what}; give the flat folder of ILSVRC2012_val_*.JPEG files")
    return {p.stem: p for p in sorted(val_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}


def flat_samples(val_dir: Path, labels_file: str, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) of every labelled image in the flat folder, for ``data.val_labels``."""
    labels, images = read_labels(labels_file), _flat_images(val_dir)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({w for s, w in labels.items() if s in images and w not in index})
    if unknown:
        raise CnnTrainError(f"data.val_labels {labels_file}: classes that train/ lacks: {', '.join(unknown[:5])}")
    samples = [(str(images[s]), index[labels[s]]) for s in sorted(images) if s in labels]
    if not samples:
        raise CnnTrainError(f"data.val_labels {labels_file}: none of its images is in {val_dir}")
    return samples


@dataclass
class Arranged:
    linked: int = 0
    copied: int = 0  # another file system: hard links impossible
    present: int = 0  # already in place (a second run)
    missing: list[str] | None = None  # labelled but not in the folder
    unlabelled: list[str] | None = None  # in the folder without a label


def arrange(val_dir: Path, labels_file: str, out: Path) -> Arranged:
    """Hard-link every labelled image of the flat ``val_dir`` into ``out/WNID/``."""
    labels, images = read_labels(labels_file), _flat_images(val_dir)
    if not set(labels) & set(images):  # a wrong folder: linking nothing is no success
        raise CnnTrainError(f"no labelled image found in {val_dir} (its {len(images)} files match none of the "
                            f"{len(labels)} names in {labels_file}); is this the flat ILSVRC2012_val_*.JPEG folder?")
    result = Arranged(missing=sorted(set(labels) - set(images)), unlabelled=sorted(set(images) - set(labels)))
    for stem, wnid in sorted(labels.items()):
        if stem not in images:
            continue
        src = images[stem]
        dst = out / wnid / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and os.path.samefile(src, dst):
            result.present += 1
            continue
        try:
            os.link(src, dst)
            result.linked += 1
        except OSError:
            shutil.copy2(src, dst)
            result.copied += 1
    return result
