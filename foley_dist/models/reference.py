"""Where the HunyuanVideo-Foley reference data (manifests, tiny weights, official outputs) lives.

It sits in `shared/reference/` beside the repository checkout (CI places `shared/` next to the
clone); `FOLEY_DIST_REFERENCE` overrides that, e.g. for an installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

from foley_dist.errors import FoleyError

ENV = "FOLEY_DIST_REFERENCE"


def reference_dir() -> Path:
    """The reference directory ($FOLEY_DIST_REFERENCE, else <checkout>/../shared/reference)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def reference_file(name: str) -> Path:
    """A file of the reference data; a clear error if it is not there."""
    path = reference_dir() / name
    if not path.is_file():
        raise FoleyError(f"reference file {path} not found; put shared/reference beside the checkout or set {ENV}")
    return path
