"""What every benchmark script prints and writes: a markdown table on stdout, the same rows as JSON.

Scripts run as `python scripts/bench_x.py`, so `import benchio` finds this file beside them.
A column is (header, key) or (header, function of the row); floats print with `digits` decimals.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Column = tuple[str, str | Callable[[dict], Any]]


def cell(row: dict, key: str | Callable[[dict], Any], digits: int = 2) -> str:
    value = key(row) if callable(key) else row.get(key, "-")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def table(rows: Sequence[dict], columns: Sequence[Column], digits: int = 2) -> str:
    """Markdown table of `rows`, one line per row."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r, k, digits) for _, k in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: Any) -> None:
    """Atomically (temp file + rename), so an interrupted benchmark never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def emit(rows: Sequence[dict], columns: Sequence[Column], json_path: str | Path | None = None,
         title: str | None = None, digits: int = 2, payload: Any = None) -> None:
    """Print the table (under `title`) and, with `json_path`, write `payload` (default: the rows)."""
    if title:
        print(f"\n{title}")
    print(table(rows, columns, digits), flush=True)
    if json_path:
        write_json(json_path, list(rows) if payload is None else payload)
