"""The package as a user installs it: a built wheel in a fresh venv, used from a folder outside the
source tree. Catches files missing from the wheel (the hydra config groups are package data) and
imports that only work from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    # build from a copy: an in-tree build leaves build/ behind, whose stale modules could reach a later wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                                             "tests", "out"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, src], cwd=tmp_path)
    (wheel,) = wheels.glob("foley_dist-*.whl")

    # a fresh venv; its dependencies (torch & co.) come from this environment's site-packages as plain
    # path entries, so only the wheel itself is installed into it (no editable finder is picked up)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_foley_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([py, "-c", "import foley_dist; print(foley_dist.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(venv), f"foley_dist imported from {where}, not from the installed wheel"

    cli = venv / "bin" / "foley-dist"
    plan = _run([cli, "plan", "resolution=720p", "duration=20", "model=hunyuan_xl", "gpus=2", "gpu_memory=80GB"], cwd=work)
    assert "layout:" in plan.stdout and "fits: yes" in plan.stdout

    _run([py, "-c", "from foley_dist.media.testclip import make_clip; make_clip('clip.mp4', seconds=3, width=64, height=48, fps=12)"], cwd=work)
    _run([cli, "generate", "video=clip.mp4", "prompt=rain", "output=out/rain.wav", "model.steps=2", "progress=false",
          "vision.cache=off", "seam_metric=false"], cwd=work)
    import soundfile as sf

    audio, rate = sf.read(work / "out" / "rain.wav")
    assert rate == 48000 and abs(len(audio) / rate - 3) < 0.2  # the release trims to the frames it picks
