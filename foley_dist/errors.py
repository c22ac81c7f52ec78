"""User-facing errors: one line naming the problem and the fix, exit code 2; and how a failing rank
leaves that line for `foley-dist launch`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from foley_dist.console import say


class FoleyError(Exception):
    """A problem with the user's input or configuration (not a bug): printed as one line, exit 2."""

    exit_code = 2


class DoesNotFit(FoleyError):
    """`foley-dist plan`: the job does not fit the given GPUs (exit 5, distinct from bad input)."""

    exit_code = 5


def record_failure(code: int, line: str, cause: int | None = None) -> int:
    """Print the one line, and leave it with the exit code in TORCHELASTIC_ERROR_FILE when torch's
    elastic agent started this worker, so `foley-dist launch` can report the root cause. `cause` is
    the rank this one found dead (engine/liveness.py), which the launcher then blames. Returns code."""
    say(line)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        record = {"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}},
                  "foley_dist": {"exit_code": code, "message": line, "time": time.time(), "cause": cause}}
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(record))
        except OSError:
            pass  # the exit code still tells the agent
    return code
