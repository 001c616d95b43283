"""Where results are written: every command's ``--json FILE``, and the checks shared by
every output path (a file or a folder about to be written), so that a wrong path gets the
same one-line error from every command."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnntrain.errors import CnnTrainError


def _check_ancestors(path: Path, what: str, fix: str = "give a path in a folder") -> None:
    """Refuse a path under a file (nothing could ever be created there), naming that file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CnnTrainError(f"{what} {path}: {parent} is a file, not a folder; {fix}")
            return


def _make_folder(folder: Path, what: str, path: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnTrainError(f"{what} {path}: cannot create {folder} ({exc.strerror or exc}); check the path") from None


def output_file(path: str | Path, what: str = "output file") -> Path:
    """A file path about to be written: not a folder, not under a file; its folder created."""
    path = Path(path)
    if path.is_dir():
        raise CnnTrainError(f"{what} {path} is a folder; give a file path")
    _check_ancestors(path, what)
    _make_folder(path.parent, what, path)
    return path


def output_folder(path: str | Path, what: str = "output folder", create: bool = True) -> Path:
    """A folder about to be written into: not a file, not under a file; created with its
    parents unless ``create`` is false (checked before other inputs are)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CnnTrainError(f"{what} {path} is a file, not a folder; give a folder path")
    _check_ancestors(path, what, "give a folder path")
    if create:
        _make_folder(path, what, path)
    return path


def write_json(result: dict[str, Any], path: str | None) -> None:
    """Write ``result`` as indented JSON to ``path`` (nothing when None), creating its folder."""
    if path:
        output_file(path, "--json").write_text(json.dumps(result, indent=2) + "\n")
