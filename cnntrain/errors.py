"""User-facing errors.

Anything the user can fix (a wrong path, a bad recipe key, a checkpoint that does not
fit the data) is raised as :class:`CnnTrainError`. The CLI prints its message on one
line and exits with code 2; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnTrainError(Exception):
    """An error caused by the user's input, with a message that says what to do."""

    exit_code = 2


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), sorted(set(choices)), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""
