"""Machine-readable results: every command's ``--json FILE``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: dict[str, Any], path: str | None) -> None:
    """Write ``result`` as indented JSON to ``path`` (nothing when None), creating its folder."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
