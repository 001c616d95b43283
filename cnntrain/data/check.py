"""``cnntrain data check ROOT``: what would go wrong with an ImageNet-style folder,
found before a training run rather than during it.

Per split (``train/``, ``val/``, ``test/`` where present): classes and image counts;
classes missing from a split or present only in val/test; empty class folders; files
outside any class folder (training ignores them); zero-byte files and files the
decoders cannot read (decoded exactly as training decodes them, :func:`read_image`);
images that are in both train and another split (same bytes, by BLAKE2 hash: a
validation score on images the model trained on means nothing); image size statistics.

The exit status says what it found: 0 clean, 1 problems (each listed with its path),
2 a bad request (no such folder, no ``train/``).
"""
from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cnntrain.data.folder import PILLOW_MAX_PIXELS, check_pixels, decode_bytes, image_files, list_classes, skip_reason
from cnntrain.errors import CnnTrainError

SPLITS = ("train", "val", "test")


@dataclass
class SplitScan:
    counts: dict[str, int] = field(default_factory=dict)  # class -> images
    loose: list[str] = field(default_factory=list)  # files outside class folders
    files: list[tuple[str, str]] = field(default_factory=list)  # (class, path)


def _scan(split_dir: Path) -> SplitScan:
    scan = SplitScan(loose=sorted(str(p) for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")))
    for name in list_classes(split_dir):
        found = image_files(split_dir / name)
        scan.counts[name] = len(found)
        scan.files += [(name, f) for f in found]
    return scan


def _inspect(path: str) -> tuple[str, tuple[int, int] | None, str | None]:
    """(content hash, (width, height) or None, problem or None) of one file."""
    with open(path, "rb") as fh:
        raw = fh.read()
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    if not raw:
        return digest, None, "zero-byte file"
    try:
        check_pixels(raw, PILLOW_MAX_PIXELS)
        img = decode_bytes(raw)  # the bytes already read for the hash
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding itself
        return digest, None, f"unreadable ({skip_reason(exc)})"
    return digest, (int(img.shape[-1]), int(img.shape[-2])), None


def _size_stats(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {}
    ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
    return {"width": [min(ws), statistics.median(ws), max(ws)], "height": [min(hs), statistics.median(hs), max(hs)],
            "smallest_side_under_224": sum(min(s) < 224 for s in sizes)}


def check_root(root: Path, progress: bool = True) -> dict[str, Any]:
    """Every finding for ``root``: {'splits': {...}, 'problems': [...]}."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such folder"
        raise CnnTrainError(f"data check {root}: {what}; give a root holding train/CLASS/IMAGE files")
    if not (root / "train").is_dir():
        raise CnnTrainError(f"data check {root}: no train/ folder; expected {root}/train/CLASS/IMAGE "
                            "(and val/CLASS/IMAGE)")
    scans = {s: _scan(root / s) for s in SPLITS if (root / s).is_dir()}
    problems: list[str] = []
    train_classes = set(scans["train"].counts)
    for split, scan in scans.items():
        problems += [f"{root / split / c}: empty class folder" for c, n in scan.counts.items() if n == 0]
        problems += [f"{p}: outside any class folder (ignored by training)" for p in scan.loose]
        if split != "train":
            lacking, extra = sorted(train_classes - set(scan.counts)), sorted(set(scan.counts) - train_classes)
            if lacking:
                problems.append(f"{split}/ lacks {len(lacking)} of train/'s classes: {', '.join(lacking[:10])}")
            if extra:
                problems.append(f"{split}/ has classes that train/ lacks: {', '.join(extra[:10])}")
    seen: dict[str, tuple[str, str]] = {}  # content hash -> (split, path) of its first file
    report: dict[str, Any] = {}
    for split, scan in scans.items():
        sizes = []
        for _, path in tqdm(scan.files, desc=f"check {split}", leave=False, disable=None if progress else True):
            digest, size, problem = _inspect(path)
            if problem:
                problems.append(f"{path}: {problem}")
            if size:
                sizes.append(size)
            first_split, first = seen.setdefault(digest, (split, path))
            if first_split != split and problem is None:
                problems.append(f"{path}: same bytes as {first} ({first_split}/ and {split}/ share an image)")
        report[split] = {"classes": len(scan.counts), "images": len(scan.files), "counts": scan.counts,
                         "sizes": _size_stats(sizes)}
    return {"root": str(root), "splits": report, "problems": problems}


def print_report(result: dict[str, Any]) -> None:
    for split, r in result["splits"].items():
        counts = r["counts"].values()
        spread = f", {min(counts)}-{max(counts)} per class" if counts else ""
        line = f"{split}: {r['classes']} classes, {r['images']} images{spread}"
        if r["sizes"]:
            w, h = r["sizes"]["width"], r["sizes"]["height"]
            line += (f"; width {w[0]}/{w[1]:g}/{w[2]}, height {h[0]}/{h[1]:g}/{h[2]} (min/median/max); "
                     f"{r['sizes']['smallest_side_under_224']} with a side under 224")
        print(line)
        if len(r["counts"]) <= 20:
            print("  " + ", ".join(f"{c} {n}" for c, n in r["counts"].items()))
    for problem in result["problems"]:
        print(f"problem: {problem}")
    n = len(result["problems"])
    print(f"{n} problem(s) found" if n else "no problems found")
