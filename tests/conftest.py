"""Shared fixtures: generated clips and a runner for the real CLI (single process or torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every multi-rank test (and every process it starts) runs under NCCL's point-to-point rules on gloo
# (foley_dist/engine/strict.py); FOLEY_DIST_STRICT_P2P=0 runs the suite on plain gloo.
os.environ.setdefault("FOLEY_DIST_STRICT_P2P", "1")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], nproc: int | None = None, timeout: float = 300, env: dict | None = None) -> Run:
    """`python -m foley_dist ARGS`, or under torchrun with `nproc` ranks (real processes, gloo)."""
    if nproc is None:
        cmd = [sys.executable, "-m", "foley_dist", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "foley_dist", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    return Run(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip12(media_dir) -> Path:
    """12 s, small frame size: three 5 s segments with 1 s overlap (the last shifted back)."""
    from foley_dist.media.testclip import make_clip

    return make_clip(media_dir / "clip12.mp4", seconds=12, width=160, height=96, fps=24, seed=1)


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory) -> Path:
    """The tiny random release folder of tests/data/reference/official_pipeline (seed 2718), written
    once per session by our own generator (~1 GB, mostly the real-size Synchformer)."""
    from foley_dist.models.release_folder import write_release
    from tests.reference import OFFICIAL

    root = tmp_path_factory.mktemp("release")
    write_release(OFFICIAL / "release_manifest.json", root, seed=2718)
    return root
