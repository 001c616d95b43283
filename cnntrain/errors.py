"""User-facing errors.

Anything the user can fix (a wrong path, a bad recipe key, a checkpoint that does not
fit the data) is raised as :class:`CnnTrainError`. The CLI prints its message on one
line and exits with code 2; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class CnnTrainError(Exception):
    """An error caused by the user's input, with a message that says what to do."""

    exit_code = 2


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), sorted(set(choices)), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""


def first_line(exc: BaseException) -> str:
    """An exception's message in one line, for an error that quotes it: its first
    non-empty line without the object addresses decoders put in it
    (``<_io.BytesIO object at 0x7f...>``), or its type's name when it says nothing (an
    empty file makes some readers raise with no message at all)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__
