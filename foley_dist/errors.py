"""User-facing errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations


class FoleyError(Exception):
    """A problem with the user's input or configuration (not a bug): printed as one line, exit 2."""

    exit_code = 2


class DoesNotFit(FoleyError):
    """`foley-dist plan`: the job does not fit the given GPUs (exit 5, distinct from bad input)."""

    exit_code = 5
