"""The HunyuanVideo-Foley reference data the tests compare against: manifests, tiny weights and the
official pipeline's outputs, copied into `tests/data/reference/` so a bare clone is self-contained
(see that folder's README for what each file is and how it was produced)."""

from __future__ import annotations

from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
OFFICIAL = REFERENCE / "official_pipeline"  # one run of the release's own pipeline (its README.md)


def reference_file(name: str) -> Path:
    """A file of the reference data (a clear assertion if the checkout lacks it)."""
    path = REFERENCE / name
    assert path.is_file(), f"reference file {path} missing from the checkout"
    return path


# Float32 results of the same maths by another implementation (a transformers module, the release's
# tensors) differ by rounding alone: another kernel or summation order moves them ~1e-7 relative
# (transformers 5.25's SiglipModel.get_image_features vs our SigLIP2 encoder: 3.5e-7). A real fault
# (a wrong weight, normalisation or layout) moves them by 1e-2 or more.
ROUNDING_RTOL = 1e-5


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (shapes must agree)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def assert_rounding_close(got: torch.Tensor, want: torch.Tensor, rtol: float = ROUNDING_RTOL) -> None:
    """`got` equals a third-party `want` up to float rounding (see ROUNDING_RTOL)."""
    err = relative_error(got, want)
    assert err < rtol, f"relative error {err:.3e} >= {rtol:.0e}"
