"""launch/slurm.sbatch's shell logic on this machine: fake SLURM_* variables and stand-in `srun` and
`scontrol` on PATH that run each of two "nodes" as a local process. The job finishes; a TERM to the
batch script (what `--signal=B:TERM@60` sends) stops the ranks and requeues the job; the requeued
run resumes from the finished segments and equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from foley_dist.media.testclip import make_clip
from tests.conftest import ROOT, run_cli
from tests.distributed.ranks import free_port
from tests.distributed.test_farm import _wait_for

SRUN = """#!/usr/bin/env bash
# stand-in srun: skip options, start the command once per node with that node's SLURM_* ids,
# forward TERM to every node, exit with the highest node exit code (as srun does)
while [[ "$1" == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
code=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break  # wait was interrupted by the trap: wait again
  done
  (( rc > code )) && code=$rc
done
echo "srun: SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK" >> "$FAKE_SLURM_LOG"
exit $code
"""

SCONTROL = """#!/usr/bin/env bash
# stand-in scontrol: two nodes on loopback; requeues are recorded
case "$1 $2" in
  "show hostnames") echo 127.0.0.1; echo 127.0.0.2 ;;
  requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "scontrol stand-in: unsupported $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "slurm.log"
    log.touch()
    port = free_port()
    assert 15000 <= port < 65000
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_JOB_ID": str(port - 15000), "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_CPUS_PER_TASK": "2", "CPUS_PER_RANK": "2", "FAKE_SLURM_LOG": str(log)}
    env.pop("SLURM_GPUS_ON_NODE", None)

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "launch/slurm.sbatch", *args], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return start, log, env["SLURM_JOB_ID"]


ARGS = ["prompt=steps", "progress=false", "vision.cache=off", "seam_metric=false", "hardware.timeout_s=20",
        "layout.ranks=[vision+fusion,diffusion]"]


def test_two_node_job_finishes_with_a_rank_per_node(slurm, clip12, tmp_path):
    start, log, _ = slurm
    out = tmp_path / "o.wav"
    p = start("generate", f"video={clip12}", f"output={out}", "model.steps=2", *ARGS)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert json.loads(out.with_suffix(".json").read_text())["world_size"] == 2  # 2 nodes x (2 cpus / 2 per rank)
    assert "SRUN_CPUS_PER_TASK=2" in log.read_text() and "requeue" not in log.read_text()


def test_term_requeues_and_the_requeued_job_resumes(slurm, media_dir, tmp_path):
    start, log, job_id = slurm
    clip = make_clip(media_dir / "slurm.mp4", 16, 96, 64, 24, seed=8)
    args = ["generate", f"video={clip}", "model.steps=20", *ARGS]
    reference = tmp_path / "ref.wav"
    assert run_cli([*args, f"output={reference}"], timeout=300).returncode == 0
    out = tmp_path / "o.wav"
    p = start(*args, f"output={out}")
    parts = lambda: list(tmp_path.glob(".o.wav.parts-*/seg*.npy"))  # noqa: E731
    _wait_for(lambda: parts() or p.poll() is not None, timeout=240)
    assert p.poll() is None, "job finished before the TERM; make it longer"
    p.send_signal(signal.SIGTERM)  # --signal=B:TERM@60 signals the batch script only
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    assert f"requeue {job_id}\n" in log.read_text()
    assert not out.exists() and parts()

    again = start(*args, f"output={out}")  # Slurm starts the requeued job with the same script and arguments
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert json.loads(out.with_suffix(".json").read_text())["segments_resumed"] >= 1
    assert np.array_equal(sf.read(out, dtype="float32")[0], sf.read(reference, dtype="float32")[0])
