"""Whole lines out of a process that shares its stdout/stderr with other ranks.

`print` issues the text and the newline as separate writes when the stream writes through
(PYTHONUNBUFFERED, as under launchers), so two ranks' lines can run together on a shared pipe.
Here each call is one `os.write` of complete lines: POSIX makes a pipe write of up to PIPE_BUF
bytes atomic, so a line never mixes with another process's output.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TextIO

PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # 512: the POSIX minimum


def say(text: str, stream: TextIO | None = None) -> None:
    """Write `text` (one or more lines; a newline is added) to `stream` (default stderr).

    Up to PIPE_BUF bytes go out in one write; a longer block goes out one write per line.
    """
    stream = sys.stderr if stream is None else stream
    stream.flush()  # what Python buffered before goes first
    data = (text.rstrip("\n") + "\n").encode(errors="replace")
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (pytest capsys, io.StringIO)
        stream.write(data.decode())
        stream.flush()
        return
    chunks = [data] if len(data) <= PIPE_BUF else [line + b"\n" for line in data.rstrip(b"\n").split(b"\n")]
    for chunk in chunks:
        while chunk:
            chunk = chunk[os.write(fd, chunk):]
