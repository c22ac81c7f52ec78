"""The HunyuanVideo-Foley reference data the tests compare against: manifests, tiny weights and the
official pipeline's outputs, copied into `tests/data/reference/` so a bare clone is self-contained
(see that folder's README for what each file is and how it was produced)."""

from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
OFFICIAL = REFERENCE / "official_pipeline"  # one run of the release's own pipeline (its README.md)


def reference_file(name: str) -> Path:
    """A file of the reference data (a clear assertion if the checkout lacks it)."""
    path = REFERENCE / name
    assert path.is_file(), f"reference file {path} missing from the checkout"
    return path
